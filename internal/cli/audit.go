package cli

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kars-io/kars/internal/audit"
)

// newAuditCmd builds "kars audit": commands over tamper-evident audit logs.
func newAuditCmd(c *cluster) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Inspect and verify tamper-evident audit logs",
	}
	cmd.AddCommand(newAuditVerifyCmd(c), newAuditTailCmd(c))
	return cmd
}

func newAuditVerifyCmd(c *cluster) *cobra.Command {
	var keys []string
	var allowPruned, asJSON bool
	var anchor string
	cmd := &cobra.Command{
		Use:   "verify NAME|DIR",
		Short: "Check an audit log directory offline",
		Long: "Verify walks every entry of the audit log in DIR: each line must be a canonical\n" +
			"entry whose SHA-256 matches, sequence numbers must run without gaps, each entry\n" +
			"must record its predecessor's hash (across daily files), and every checkpoint\n" +
			"must be signed by the key in force and match the entry it names. It reports the\n" +
			"first entry that was modified, deleted, inserted or reordered, or the checkpoint\n" +
			"that does not match, and exits non-zero.\n\n" +
			"Without --key the checkpoint keys the log announces are believed; pin the\n" +
			"sandbox's key with --key to also catch a rewrite of the whole log. Checkpoints\n" +
			"live beside the log, so a tail cut together with them verifies on its own:\n" +
			"--anchor SEQ:HASH (the head the controller keeps in the sandbox's status.audit)\n" +
			"catches it. Given a sandbox NAME, the router verifies its own log with the key\n" +
			"and head the controller recorded.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := audit.VerifyOptions{AllowPruned: allowPruned}
			if anchor != "" {
				a, err := parseAnchor(anchor)
				if err != nil {
					return fmt.Errorf("--anchor %s: %w", anchor, err)
				}
				opts.Anchor = a
			}
			for _, k := range keys {
				pub, err := readPublicKey(k)
				if err != nil {
					return fmt.Errorf("--key %s: %w", k, err)
				}
				opts.TrustedKeys = append(opts.TrustedKeys, pub)
			}
			dir := args[0]
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				if len(validation.IsDNS1035Label(dir)) > 0 {
					return fmt.Errorf("%s is not a directory, nor a sandbox name: give an audit log directory or a sandbox", dir)
				}
				if len(keys) > 0 || allowPruned || anchor != "" {
					return fmt.Errorf("%s is not a directory: --key, --anchor and --allow-pruned apply to an offline check of an audit log directory", dir)
				}
				// Not a directory: a sandbox name, verified by its router.
				return c.verifySandbox(cmd.Context(), dir, cmd.OutOrStdout(), asJSON)
			}
			rep, err := audit.Verify(dir, opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if err := writeVerifyJSON(out, dir, rep); err != nil {
					return err
				}
			} else {
				writeVerifyText(out, dir, rep)
			}
			if rep.Problem != nil {
				return fmt.Errorf("audit log %s failed verification: %s at %s", dir, rep.Problem.Kind, rep.Problem.At)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&keys, "key", nil, "trusted checkpoint public key: base64, or a file holding base64 or a PEM public key (repeatable)")
	cmd.Flags().StringVar(&anchor, "anchor", "", "SEQ:HASH of a head recorded outside the log (a sandbox's status.audit): the log must still hold that entry")
	cmd.Flags().BoolVar(&allowPruned, "allow-pruned", false, "accept a log whose oldest files were removed by retention")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func writeVerifyText(w io.Writer, dir string, rep *audit.Report) {
	if rep.Problem != nil {
		p := rep.Problem
		fmt.Fprintf(w, "FAILED %s\n  %s: entry %d at %s\n  %s\n", dir, p.Kind, p.Seq, p.At, p.Detail)
	} else {
		fmt.Fprintf(w, "OK %s\n", dir)
	}
	fmt.Fprintf(w, "  %d entries (%d..%d) in %d files; %d checkpoints, signed through entry %d\n",
		rep.Entries, rep.FirstSeq, rep.LastSeq, rep.Files, rep.Checkpoints, rep.SignedSeq)
	if rep.HeadHash != "" {
		fmt.Fprintf(w, "  head %s\n", rep.HeadHash)
	}
	for _, warn := range rep.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", warn)
	}
}

func writeVerifyJSON(w io.Writer, dir string, rep *audit.Report) error {
	type problem struct {
		Kind   string `json:"kind"`
		Seq    uint64 `json:"seq"`
		File   string `json:"file"`
		Line   int    `json:"line"`
		Detail string `json:"detail"`
	}
	v := struct {
		Dir         string   `json:"dir"`
		OK          bool     `json:"ok"`
		Entries     uint64   `json:"entries"`
		FirstSeq    uint64   `json:"firstSeq"`
		LastSeq     uint64   `json:"lastSeq"`
		HeadHash    string   `json:"headHash"`
		Files       int      `json:"files"`
		Checkpoints int      `json:"checkpoints"`
		SignedSeq   uint64   `json:"signedSeq"`
		Warnings    []string `json:"warnings,omitempty"`
		Problem     *problem `json:"problem,omitempty"`
	}{Dir: dir, OK: rep.OK(), Entries: rep.Entries, FirstSeq: rep.FirstSeq, LastSeq: rep.LastSeq, HeadHash: rep.HeadHash,
		Files: rep.Files, Checkpoints: rep.Checkpoints, SignedSeq: rep.SignedSeq, Warnings: rep.Warnings}
	if p := rep.Problem; p != nil {
		v.Problem = &problem{Kind: string(p.Kind), Seq: p.Seq, File: p.At.File, Line: p.At.Line, Detail: p.Detail}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// readPublicKey accepts a base64 Ed25519 public key (as audit:open entries
// carry it), or a file holding one or a PEM "PUBLIC KEY".
func readPublicKey(arg string) (ed25519.PublicKey, error) {
	text := arg
	if data, err := os.ReadFile(arg); err == nil {
		text = string(data)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if block, _ := pem.Decode([]byte(text)); block != nil {
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM public key: %w", err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("PEM public key is %T, want Ed25519", k)
		}
		return pub, nil
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(text))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("not a base64 Ed25519 public key (32 bytes), a file holding one, or a PEM public key")
	}
	return ed25519.PublicKey(raw), nil
}

// parseAnchor reads SEQ:HASH.
func parseAnchor(s string) (*audit.Receipt, error) {
	seq, hash, ok := strings.Cut(s, ":")
	n, err := strconv.ParseUint(seq, 10, 64)
	if !ok || err != nil || n == 0 || len(hash) != 64 || strings.Trim(hash, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("want SEQ:HASH, a positive entry number and its 64-digit lowercase hex SHA-256")
	}
	return &audit.Receipt{Seq: n, Hash: hash}, nil
}
