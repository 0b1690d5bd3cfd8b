package governance

import (
	"fmt"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/interpreter"
)

// Conditions are CEL expressions compiled once, when a policy loads. They see
// three variables:
//
//	args    map(string, dyn)  the call's arguments (empty when none)
//	action  string            the action being decided
//	agent   string            the calling agent's id
//
// Evaluation is bounded by a cost limit so that a pathological expression
// cannot stall the router. An expression that fails at run time (a missing
// key, a type mismatch, the cost limit) resolves toward the stricter outcome:
// a deny or require-approval rule then matches, an allow rule does not.

// conditionCostLimit bounds one expression's evaluation cost (roughly the
// number of operations and list elements visited).
const conditionCostLimit = 100_000

var (
	celEnvOnce sync.Once
	celEnv     *cel.Env
	celEnvErr  error
)

func conditionEnv() (*cel.Env, error) {
	celEnvOnce.Do(func() {
		celEnv, celEnvErr = cel.NewEnv(
			cel.Variable("args", cel.MapType(cel.StringType, cel.DynType)),
			cel.Variable("action", cel.StringType),
			cel.Variable("agent", cel.StringType),
			// JSON numbers arrive as doubles; authors write `args.amount > 100`.
			cel.CrossTypeNumericComparisons(true),
			cel.ParserExpressionSizeLimit(MaxExpressionLen),
			cel.ParserRecursionLimit(64),
		)
	})
	return celEnv, celEnvErr
}

// condition is one compiled expression.
type condition struct {
	expr    string
	message string
	prg     cel.Program
}

func compileCondition(c Condition) (*condition, error) {
	if c.Expression == "" {
		return nil, fmt.Errorf("empty expression")
	}
	if len(c.Expression) > MaxExpressionLen {
		return nil, fmt.Errorf("expression longer than %d bytes", MaxExpressionLen)
	}
	env, err := conditionEnv()
	if err != nil {
		return nil, fmt.Errorf("CEL environment: %w", err)
	}
	ast, iss := env.Compile(c.Expression)
	if iss.Err() != nil {
		return nil, fmt.Errorf("CEL: %v", iss.Err())
	}
	if !ast.OutputType().IsExactType(cel.BoolType) && !ast.OutputType().IsExactType(cel.DynType) {
		return nil, fmt.Errorf("CEL expression yields %s, want bool", ast.OutputType())
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.CostLimit(conditionCostLimit))
	if err != nil {
		return nil, fmt.Errorf("CEL program: %w", err)
	}
	return &condition{expr: c.Expression, message: c.Message, prg: prg}, nil
}

// eval runs the expression. ok is false when evaluation failed or produced a
// non-boolean; the caller then decides which way to fail.
func (c *condition) eval(req *Request) (result, ok bool) {
	out, _, err := c.prg.Eval(&activation{req: req})
	if err != nil {
		return false, false
	}
	b, isBool := out.Value().(bool)
	return b, isBool
}

var noArgs = map[string]any{}

// activation exposes a Request to CEL without building a map per call.
type activation struct{ req *Request }

// ResolveName implements interpreter.Activation over the request.
func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "args":
		if a.req.Args == nil {
			return noArgs, true
		}
		return a.req.Args, true
	case "action":
		return a.req.Action, true
	case "agent":
		return a.req.Agent, true
	}
	return nil, false
}

// Parent implements interpreter.Activation; there is no enclosing scope.
func (a *activation) Parent() interpreter.Activation { return nil }
