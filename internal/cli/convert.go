package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/agentsandbox"
	"github.com/kars-io/kars/internal/convert/lossy"
	"github.com/kars-io/kars/internal/convert/manifest"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/version"
)

// now is the clock for migration dates; tests replace it.
var now = time.Now

// stdin is where "-" reads from; tests replace it.
var stdin io.Reader = os.Stdin

// errLossy reports a lossy conversion refused without --allow-lossy.
var errLossy = errors.New("lossy conversion")

func newConvertCmd() *cobra.Command {
	var file, to, sandboxRef string
	var allowLossy bool
	cmd := &cobra.Command{
		Use:   "convert -f FILE --to karssandbox|upstream-sandbox|overlay",
		Short: "Convert between agent-sandbox Sandboxes and KarsSandboxes (no cluster needed)",
		Long: "convert reads manifests from FILE (a file, a directory, or - for stdin) and prints the\n" +
			"converted objects as YAML after a preamble that names every field that was not carried.\n\n" +
			"  --to karssandbox       agents.x-k8s.io Sandboxes (v1beta1, or v1alpha1) → KarsSandbox with a\n" +
			"                         dev-only InferencePolicy and ToolPolicy; kars-only features left off\n" +
			"  --to upstream-sandbox  KarsSandboxes → agents.x-k8s.io/v1beta1 Sandboxes running the same agent\n" +
			"                         container without governance; needs --allow-lossy\n" +
			"  --to overlay           an upstream Sandbox → the KarsSandbox that governs its pod in overlay mode",
		Example: "  kars convert -f sandbox.yaml --to karssandbox > karssandbox.yaml\n" +
			"  kars convert -f karssandbox.yaml --to upstream-sandbox --allow-lossy\n" +
			"  kars convert -f sandbox.yaml --to overlay --sandbox-ref=prod/web-agent",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("say what to convert with -f FILE (or -f - for stdin)")
			}
			in, err := readInput(file)
			if err != nil {
				return err
			}
			o := agentsandbox.Options{Date: now()}
			var out []byte
			switch to {
			case "karssandbox":
				res, err := agentsandbox.ToKars(in, o)
				if err != nil {
					return err
				}
				out, err = manifest.Encode(res.Objects, lossy.Preamble(
					"kars convert --to karssandbox: agents.x-k8s.io Sandbox → kars.azure.com/v1alpha1 KarsSandbox",
					res.Lossy, agentsandbox.Defaults, res.Notes, res.Skipped))
				if err != nil {
					return err
				}
				if len(res.Lossy) > 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "kars: %d source field(s) were not carried; the preamble of the output names them\n", len(res.Lossy))
				}
			case "overlay":
				res, err := agentsandbox.Overlay(in, sandboxRef, o)
				if err != nil {
					return err
				}
				out, err = manifest.Encode(res.Objects, lossy.Preamble(
					"kars convert --to overlay: kars governs the upstream-owned pod of Sandbox "+res.Sandboxes[0].Namespace+"/"+res.Sandboxes[0].Name,
					nil, agentsandbox.Defaults, res.Notes, res.Skipped))
				if err != nil {
					return err
				}
			case "upstream-sandbox":
				out, err = toUpstream(cmd, in, allowLossy)
				if err != nil {
					return err
				}
			default:
				return fmt.Errorf("--to %q: use karssandbox, upstream-sandbox or overlay", to)
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "filename", "f", "", "manifests to convert: a file, a directory of .yaml/.yml/.json files, or - for stdin")
	f.StringVar(&to, "to", "", "what to produce: karssandbox, upstream-sandbox or overlay")
	f.BoolVar(&allowLossy, "allow-lossy", false, "convert KarsSandboxes to upstream Sandboxes even though governance, policies and network containment are lost")
	f.StringVar(&sandboxRef, "sandbox-ref", "", "for --to overlay: the upstream Sandbox to govern, NAMESPACE/NAME (default: the only Sandbox in the input)")
	return cmd
}

// toUpstream converts every KarsSandbox of in; with anything lossy and no
// allowLossy it prints the report to stderr and writes nothing.
func toUpstream(cmd *cobra.Command, in []manifest.Object, allowLossy bool) ([]byte, error) {
	catalog := render.Catalog{Registry: render.DefaultRegistry, Version: version.Version, GitSyncImage: render.DefaultGitSyncImage}
	var objs []any
	var dropped []lossy.Field
	var skipped []string
	for _, obj := range in {
		if obj.GetAPIVersion() != karsv1.GroupVersion.String() || obj.GetKind() != "KarsSandbox" {
			skipped = append(skipped, fmt.Sprintf("%s (%s): not a KarsSandbox", obj.Ref(), obj.Source))
			continue
		}
		var sb karsv1.KarsSandbox
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(obj.Object, &sb, true); err != nil {
			return nil, &manifest.Error{Source: obj.Source, Err: fmt.Errorf("%s: %w", obj.Ref(), err)}
		}
		u, lost, err := agentsandbox.FromKars(&sb, catalog)
		if err != nil {
			return nil, &manifest.Error{Source: obj.Source, Err: err}
		}
		objs = append(objs, u.Object)
		dropped = append(dropped, lost...)
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("no kars.azure.com/v1alpha1 KarsSandbox in the input (found %d other objects)", len(in))
	}
	pre := lossy.Preamble("kars convert --to upstream-sandbox: KarsSandbox → agents.x-k8s.io/v1beta1 Sandbox (no router, no governance)",
		dropped, nil, nil, skipped)
	if len(dropped) > 0 && !allowLossy {
		fmt.Fprintln(cmd.ErrOrStderr(), strings.Join(pre, "\n"))
		return nil, fmt.Errorf("%w: %d KarsSandbox field(s) have no place in an upstream Sandbox (listed above); nothing was written. "+
			"Re-run with --allow-lossy to convert without them", errLossy, len(dropped))
	}
	return manifest.Encode(objs, pre)
}

// readInput reads manifests from a file, a directory (its .yaml, .yml and
// .json files, sorted, not recursing) or "-" (stdin).
func readInput(path string) ([]manifest.Object, error) {
	if path == "-" {
		return manifest.Read(stdin, "stdin")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read manifests: %w", err)
	}
	if !fi.IsDir() {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		defer f.Close()
		return manifest.Read(f, path)
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("read manifests: %w", err)
	}
	var out []manifest.Object
	var names []string
	for _, e := range entries {
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".yaml", ".yml", ".json":
			if e.Type().IsRegular() {
				names = append(names, e.Name())
			}
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("directory %s holds no .yaml, .yml or .json files", path)
	}
	for _, n := range names {
		p := filepath.Join(path, n)
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		objs, err := manifest.Read(f, p)
		f.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	return out, nil
}
