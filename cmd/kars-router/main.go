// Command kars-router is the per-sandbox router that runs as UID 1001 beside
// every agent: the agent's only way out for inference, with brokered
// credentials, token budgets, content safety, governance and audit on every
// call. See docs/router.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/version"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "trust" {
		os.Exit(trust(os.Args[2:]))
	}
	defaultConfig := os.Getenv("KARS_ROUTER_CONFIG")
	if defaultConfig == "" {
		defaultConfig = "/etc/kars/router/router.json"
	}
	configPath := flag.String("config", defaultConfig, "path of the compiled router config (env KARS_ROUTER_CONFIG), under $KARS_ROUTER_ROOT when that is set")
	level := flag.String("log-level", "info", "log level: debug, info, warn or error")
	showVersion := flag.Bool("version", false, "print the version and exit")
	memoryLimit := flag.String("memory-limit", os.Getenv(router.EnvMemoryLimit),
		"the container's memory limit (bytes, or with a suffix such as Mi; env "+router.EnvMemoryLimit+"): the garbage collector keeps the process under 90% of it, spending more CPU near it; empty: GOGC alone")
	flag.Parse()
	if *showVersion {
		fmt.Println(version.Get().String())
		return
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "kars-router: -log-level %q: %v\n", *level, err)
		os.Exit(2)
	}
	limit, err := router.ParseMemorySize(*memoryLimit)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kars-router: -memory-limit: %v\n", err)
		os.Exit(2)
	}
	logs := router.NewLogWriter(os.Stderr)
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: lvl}))
	router.SetMinProcs()
	defer router.TuneGC()()
	if soft := router.SetMemoryLimit(limit); soft > 0 {
		log.Info("Go memory limit set from the container's", "container_bytes", limit, "soft_limit_bytes", soft)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The local substrate binds the router's ports inside the pod and
	// passes them with the systemd socket-activation protocol.
	passed, err := router.ActivatedListeners()
	if err != nil {
		log.Error("kars-router cannot start", "err", err)
		logs.Close()
		os.Exit(1)
	}
	// The local substrate keeps the router's files under one directory;
	// on Kubernetes they are mounted where the config says.
	root := os.Getenv(routerconfig.EnvRoot)
	if err := router.Serve(ctx, router.ServeOptions{ConfigPath: *configPath, Root: root, Logger: log, Listeners: passed,
		BufferBytes: router.BufferBytesFor(limit), NoEgressListeners: os.Getenv(router.EnvNoEgressListeners) == "1"}); err != nil {
		log.Error("kars-router stopped", "err", err)
		logs.Close()
		os.Exit(1)
	}
	logs.Close()
}
