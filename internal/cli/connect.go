package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spf13/cobra"
)

func newConnectCmd(c *cluster) *cobra.Command {
	var message, session string
	var asJSON, tui bool
	cmd := &cobra.Command{
		Use:   "connect NAME",
		Short: "Chat with a sandbox's agent",
		Long: "connect opens a chat with the agent of sandbox NAME (through the dev daemon locally,\n" +
			"or a port-forward on a cluster). Each line you type is one message; tool calls the\n" +
			"agent makes are shown with the router's policy decision. Use -m to send one\n" +
			"message and exit, for scripts.",
		Example: "  kars connect dev-agent\n  kars connect dev-agent -m \"use the calculator for 6*7\"",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, sb, err := c.sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			ep, err := c.agentEndpoint(ctx, cl, sb)
			if err != nil {
				return err
			}
			defer ep.close()
			if tui {
				return openClawTUI(ctx, sb, ep, session, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			out := cmd.OutOrStdout()
			if cmd.Flags().Changed("message") {
				return sendChat(ctx, ep, session, message, out, asJSON)
			}
			fmt.Fprintf(out, "connected to %s/%s (session %q). Type a message; Ctrl-D to leave.\n", sb.Namespace, sb.Name, session)
			in := bufio.NewScanner(cmd.InOrStdin())
			in.Buffer(make([]byte, 64<<10), 1<<20)
			for fmt.Fprint(out, "> "); in.Scan(); fmt.Fprint(out, "> ") {
				line := strings.TrimSpace(in.Text())
				if line == "" {
					continue
				}
				if err := sendChat(ctx, ep, session, line, out, asJSON); err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "error:", err)
				}
			}
			fmt.Fprintln(out)
			return in.Err()
		},
	}
	cmd.Flags().StringVarP(&message, "message", "m", "", "send one message, print the reply and exit")
	cmd.Flags().StringVar(&session, "session", "default", "conversation to continue")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the agent's full JSON answer")
	cmd.Flags().BoolVar(&tui, "tui", false, "OpenClaw sandboxes: open OpenClaw's own terminal UI (needs openclaw installed)")
	return cmd
}

type chatTurn struct {
	Reply     string `json:"reply"`
	Model     string `json:"model"`
	ToolCalls []struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
		Decision  string `json:"decision"`
		Reason    string `json:"reason"`
		Result    string `json:"result"`
	} `json:"toolCalls"`
	Usage struct {
		PromptTokens     int64 `json:"promptTokens"`
		CompletionTokens int64 `json:"completionTokens"`
	} `json:"usage"`
}

func sendChat(ctx context.Context, ep *endpoint, session, message string, out io.Writer, asJSON bool) error {
	body, _ := json.Marshal(map[string]string{"session": session, "message": message})
	resp, err := ep.do(ctx, http.MethodPost, "/v1/chat", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("reach the agent: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
			return &chatError{status: resp.StatusCode, msg: e.Error.Message}
		}
		return &chatError{status: resp.StatusCode, msg: strings.TrimSpace(string(raw))}
	}
	if asJSON {
		_, err := out.Write(raw)
		return err
	}
	var t chatTurn
	if err := json.Unmarshal(raw, &t); err != nil {
		return fmt.Errorf("the agent answered something that is not a chat turn: %w", err)
	}
	for _, tc := range t.ToolCalls {
		line := fmt.Sprintf("  [tool %s: %s", tc.Name, tc.Decision)
		if tc.Decision != "allow" && tc.Reason != "" {
			line += " — " + tc.Reason
		}
		fmt.Fprintln(out, line+"]")
	}
	fmt.Fprintln(out, t.Reply)
	return nil
}

// chatError is a refusal passed on by the agent (budget, policy, safety).
type chatError struct {
	status int
	msg    string
}

func (e *chatError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.status, http.StatusText(e.status), e.msg)
}

// exitCode maps a chat refusal to a process exit code scripts can test:
// 3 for budget/rate limits (429), 1 otherwise.
func exitCode(err error) int {
	var ce *chatError
	if errors.As(err, &ce) && ce.status == http.StatusTooManyRequests {
		return 3
	}
	return 1
}
