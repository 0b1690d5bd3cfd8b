package agent

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
)

// maxChatBody caps a chat request body.
const maxChatBody = 1 << 20

// ChatRequest is the body of POST /v1/chat.
type ChatRequest struct {
	Session string `json:"session,omitempty"`
	Message string `json:"message"`
}

// Handler serves the contract's chat API:
//
//	POST   /v1/chat            {"session":"default","message":"…"} → Turn
//	GET    /v1/sessions/{id}   → []Message
//	DELETE /v1/sessions/{id}
//	GET    /healthz            → {"status":"ok"}
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "contract": ContractVersion})
	})
	mux.HandleFunc("POST /v1/chat", func(w http.ResponseWriter, r *http.Request) {
		raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxChatBody))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, "request body exceeds 1 MiB")
			return
		}
		var req ChatRequest
		if err := json.Unmarshal(raw, &req); err != nil {
			writeError(w, http.StatusBadRequest, "body must be JSON like {\"message\":\"hello\"}: "+err.Error())
			return
		}
		if req.Session == "" {
			req.Session = "default"
		}
		turn, err := a.Chat(r.Context(), req.Session, req.Message)
		var up *UpstreamError
		switch {
		case errors.As(err, &up):
			writeError(w, up.Status, up.Message)
		case err != nil:
			writeError(w, http.StatusBadRequest, err.Error())
		default:
			writeJSON(w, http.StatusOK, turn)
		}
	})
	mux.HandleFunc("GET /v1/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		msgs, err := a.History(r.PathValue("id"))
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if msgs == nil {
			msgs = []Message{}
		}
		writeJSON(w, http.StatusOK, msgs)
	})
	mux.HandleFunc("DELETE /v1/sessions/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := a.Forget(r.PathValue("id")); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "status": status}})
}
