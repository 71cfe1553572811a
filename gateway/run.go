package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/envgate/envgate/gateway/internal/cloudlog"
	"github.com/envgate/envgate/gateway/internal/config"
)

//go:embed default.yaml
var defaultConfig []byte

const usage = `envgate routes gRPC calls and HTTP requests to the environment their
"env" header names.

Usage:
  gateway [flags]                     serve (the default command)
  gateway explain [flags]             the routing decision for one request, and why
  gateway validate [flags] [file...]  check a configuration and its VirtualService
                                      and DestinationRule files offline
  gateway version                     print the version

Run "gateway <command> -h" for a command's flags.

Flags of gateway (serve):
`

// run parses the command line, loads the configuration and serves until ctx
// ends, or runs the subcommand args name.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "explain":
			return runExplain(ctx, args[1:], stdout, stderr)
		case "validate":
			return runValidate(args[1:], stdout, stderr)
		case "version":
			if len(args) > 1 {
				return fmt.Errorf("version: unexpected argument %q", args[1])
			}
			fmt.Fprintf(stdout, "envgate %s\n", version)
			return nil
		case "help":
			args = []string{"-h"}
		default:
			return fmt.Errorf("unknown command %q (commands: explain, validate, version; flags start with -; gateway -h lists them)", args[0])
		}
	}
	fs := newFlagSet("gateway", usage, stderr)
	configPath := fs.String("config", "", "YAML configuration file (default: the embedded demo configuration)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error (the access log is written at every level)")
	logFormat := fs.String("log-format", "json", `json, or cloud-logging: Cloud Logging's structured form ("severity", "message", "httpRequest"; the trace of $GOOGLE_CLOUD_PROJECT)`)
	pprof := fs.Bool("pprof", false, "serve Go's profiles at /debug/pprof/ on the debug listener (admin.debugAddress)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file for Kubernetes discovery (default $KUBECONFIG, then in-cluster)")
	if done, err := parseFlags(fs, args, false); done || err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	var h slog.Handler
	switch *logFormat {
	case "json":
		h = slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: level})
	case "cloud-logging":
		h = cloudlog.NewHandler(stdout, &slog.HandlerOptions{Level: level}, os.Getenv("GOOGLE_CLOUD_PROJECT"))
	default:
		return fmt.Errorf("-log-format: %q is neither json nor cloud-logging", *logFormat)
	}
	log := slog.New(h)

	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	// Flags override the file, at start and at every reload.
	flags := func(c *config.Config) {
		if *kubeconfig != "" && c.Discovery.Kubernetes != nil {
			c.Discovery.Kubernetes.Kubeconfig = *kubeconfig
		}
		if *pprof {
			c.Admin.Pprof = true
		}
	}
	if *pprof {
		// main turns allocation sampling off; the heap profile needs it
		// (Go's default rate).
		runtime.MemProfileRate = 512 << 10
	}
	flags(cfg)
	gw, err := newGateway(cfg, log, nil)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	gw.watchConfig(*configPath, hup, flags)
	return gw.Run(ctx)
}

// newFlagSet is a command's flags, its errors and -h on stderr, -h
// printing usage (when not empty) before the flags.
func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if usage != "" {
		fs.Usage = func() {
			fmt.Fprint(fs.Output(), usage)
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args into fs. done is true when the user asked for
// help (printed, not an error); positional arguments are refused unless
// positional is true, so that a misplaced flag value is not silently
// ignored.
func parseFlags(fs *flag.FlagSet, args []string, positional bool) (done bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return true, err
	}
	if !positional && fs.NArg() > 0 {
		cmd := strings.TrimPrefix(strings.TrimPrefix(fs.Name(), "gateway"), " ")
		if cmd != "" {
			cmd += ": "
		}
		return true, fmt.Errorf("%sunexpected argument %q (flags go before arguments; -h lists them)", cmd, fs.Arg(0))
	}
	return false, nil
}

// loadConfig reads the configuration file, or the embedded demo
// configuration when path is empty.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Parse(defaultConfig)
	}
	return config.Load(path)
}
