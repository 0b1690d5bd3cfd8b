package render

import (
	"errors"
	"fmt"
)

// Reasons a sandbox cannot be rendered. They become the reason of the
// sandbox's conditions, so they are CamelCase and stable.
const (
	// ReasonAdapterMissing: the runtime kind is in the schema but kars has
	// no adapter image for it yet (SemanticKernel).
	ReasonAdapterMissing = "AdapterMissing"
	// ReasonShapeInvalid: the runtime block asks for a variant kars cannot
	// run (MicrosoftAgentFramework with language dotnet).
	ReasonShapeInvalid = "ShapeInvalid"
	// ReasonPolicyInvalid: the policies compile to a router config that
	// the router would refuse.
	ReasonPolicyInvalid = "PolicyInvalid"
	// ReasonToolPolicyNotApplicable: the referenced ToolPolicy's appliesTo
	// excludes this sandbox.
	ReasonToolPolicyNotApplicable = "ToolPolicyNotApplicable"
	// ReasonInvalidSpec: something else in the sandbox cannot be rendered
	// (a name too long for its Service, a reserved environment variable).
	ReasonInvalidSpec = "InvalidSpec"
)

// Error is a rendering failure the user must fix in a spec. Reason is one of
// the Reason constants.
type Error struct {
	Reason  string
	Message string
}

func (e *Error) Error() string { return e.Reason + ": " + e.Message }

func fail(reason, format string, args ...any) error {
	return &Error{Reason: reason, Message: sprintf(format, args...)}
}

// ReasonOf returns the reason of a render Error, or "" for other errors.
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func sprintf(format string, args ...any) string {
	if len(args) == 0 {
		return format
	}
	return fmt.Sprintf(format, args...)
}
