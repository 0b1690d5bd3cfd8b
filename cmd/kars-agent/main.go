// Command kars-agent is the built-in reference agent and the worked example
// of the kars runtime contract v1 (docs/runtime-contract.md).
package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kars-io/kars/internal/agent"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg, err := agent.ConfigFromEnv(os.Getenv)
	if err != nil {
		log.Error("configuration", "err", err)
		os.Exit(2)
	}
	a, err := agent.New(cfg)
	if err != nil {
		log.Error("start", "err", err)
		os.Exit(1)
	}
	srv := &http.Server{Addr: cfg.Listen, Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	go a.ServeMesh(ctx, log)
	tg, err := agent.TelegramFromEnv(os.Getenv)
	if err != nil {
		log.Error("telegram channel not started", "err", err)
	}
	if tg != nil {
		log.Info("telegram channel on", "api", tg.Base)
		go a.ServeTelegram(ctx, log, tg)
	}
	log.Info("kars-agent serving", "listen", cfg.Listen, "router", cfg.RouterURL, "model", cfg.Model, "sandbox", cfg.Namespace+"/"+cfg.Sandbox)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serve", "err", err)
		os.Exit(1)
	}
}
