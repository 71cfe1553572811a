package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/envgate/envgate/gateway/internal/config"
)

//go:embed default.yaml
var defaultConfig []byte

// run parses the command line, loads the configuration and serves until ctx
// ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "explain" {
		return runExplain(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration file (default: the embedded demo configuration)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file for Kubernetes discovery (default $KUBECONFIG, then in-cluster)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: level}))

	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	if *kubeconfig != "" && cfg.Discovery.Kubernetes != nil {
		cfg.Discovery.Kubernetes.Kubeconfig = *kubeconfig
	}
	gw, err := newGateway(cfg, log, nil)
	if err != nil {
		return err
	}
	return gw.Run(ctx)
}

// loadConfig reads the configuration file, or the embedded demo
// configuration when path is empty.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Parse(defaultConfig)
	}
	return config.Load(path)
}
