package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseAppliesDefaults(t *testing.T) {
	c, err := Parse([]byte(`
discovery:
  static:
    env1: [127.0.0.1:50051]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Routing != (Routing{Header: "env", Service: "app-service", Port: "grpc"}) {
		t.Errorf("routing %+v", c.Routing)
	}
	if len(c.Environments) != 1 || c.Environments[0] != "env1" {
		t.Errorf("environments %v, want those of the static discovery", c.Environments)
	}
	if c.Limits.MaxMessageBytes != 16<<20 || c.ShutdownGrace != 30*time.Second || !*c.AccessLog {
		t.Errorf("limits %+v grace %v", c.Limits, c.ShutdownGrace)
	}
	if got := c.StaticEndpoints()["app-service.env1"]; len(got) != 1 {
		t.Errorf("static endpoints %v", c.StaticEndpoints())
	}
}

// Every HTTP/2 connection is envgate's own server's unless a listener
// says sharedHTTP2: false.
func TestSharedHTTP2IsTheDefault(t *testing.T) {
	c, err := Parse([]byte(`
listeners:
  - address: 127.0.0.1:8080
  - address: 127.0.0.1:8081
    sharedHTTP2: false
  - address: 127.0.0.1:8082
    sharedHTTP2: true
discovery:
  static:
    env1: [127.0.0.1:50051]
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []bool
	for _, l := range c.Listeners {
		got = append(got, l.Shared())
	}
	if len(got) != 3 || !got[0] || got[1] || !got[2] {
		t.Fatalf("shared %v, want [true false true]", got)
	}
}

func TestParseRejects(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, want string }{
		// Issue 14, point 6: mistakes said in the file's terms.
		"misspelled field":          {"environment: [env1]", `line 1: unknown key "environment" at the top level: did you mean "environments"?`},
		"misspelled nested field":   {"discovery: {static: {env1: ['127.0.0.1:1']}}\nlisteners: [{adress: ':1'}]", `line 2: unknown key "adress" in listeners[0]: did you mean "address"?`},
		"key in the wrong case":     {"drainDelay: 1s\nDrainDelay: 2s", `unknown key "DrainDelay" at the top level: did you mean "drainDelay"?`},
		"unknown key, no near one":  {"zzz: 1", "(known: listeners, routing, environments"},
		"no environments":           {"listeners: [{address: ':1'}]\ndiscovery: {dns: {}}", "environments: none configured"},
		"empty config":              {"", "discovery: missing"},
		"duration without unit":     {"environments: [env1]\ndrainDelay: 5", "line 2: drainDelay: 5 has no unit: write 5s"},
		"not a number":              {"limits: {maxConnections: lots}", `line 1: limits.maxConnections: "lots" is not a whole number`},
		"not a bool":                {"routing: {debugHeader: maybe}", `line 1: routing.debugHeader: "maybe" is not true or false`},
		"not a list":                {"environments: env1", "line 1: environments: want a list"},
		"tracing without endpoint":  {"discovery: {static: {env1: ['127.0.0.1:1']}}\ntracing: {protocol: grpc}", `tracing.endpoint "": the collector's host:port is needed`},
		"tracing protocol":          {"discovery: {static: {env1: ['127.0.0.1:1']}}\ntracing: {endpoint: 'c:4317', protocol: thrift}", `tracing.protocol "thrift": grpc or http`},
		"sampling above 1":          {"discovery: {static: {env1: ['127.0.0.1:1']}}\ntracing: {endpoint: 'c:4317', samplingRatio: 2}", "tracing.samplingRatio 2: between 0 and 1"},
		"port out of range":         {"listeners: [{address: ':70000'}]", `listeners[0].address ":70000": port "70000" is not a number from 0 to 65535`},
		"port not a number":         {"listeners: [{address: ':http'}]", `listeners[0].address ":http": port "http" is not a number`},
		"duplicate listeners":       {"listeners: [{address: '127.0.0.1:8080'}, {address: '127.0.0.1:8080'}]", `listeners[1].address "127.0.0.1:8080": already bound by listeners[0].address`},
		"admin on a listener":       {"listeners: [{address: '127.0.0.1:8080'}]\nadmin: {address: '127.0.0.1:8080'}", `admin.address "127.0.0.1:8080": already bound by listeners[0].address`},
		"baseline not an env":       {"discovery: {static: {env1: ['127.0.0.1:1']}}\nrouting: {baseline: env9}", `routing.baseline "env9": not one of the environments [env1]`},
		"env without endpoints":     {"environments: [env1, env2]\ndiscovery: {static: {env1: ['127.0.0.1:1']}}", `discovery.static: environment "env2" has no endpoints`},
		"env not a label":           {"environments: [env1.evil.com]", `"env1.evil.com" is not a namespace name`},
		"env upper case":            {"environments: [Env1]", `"Env1" is not a namespace name`},
		"duplicate env":             {"environments: [env1, env1]", "listed twice"},
		"static env not listed":     {"environments: [env1]\ndiscovery: {static: {env2: ['127.0.0.1:1']}}", "discovery.static.env2: not in environments"},
		"bad endpoint":              {"discovery: {static: {env1: ['127.0.0.1']}}", `endpoint "127.0.0.1"`},
		"bad listener":              {"listeners: [{address: nowhere}]\nenvironments: [env1]", `listeners[0].address "nowhere"`},
		"tls half set":              {"listeners: [{address: ':1', tls: {certFile: a}}]\nenvironments: [env1]", "certFile and keyFile are both required"},
		"bad duration":              {"environments: [env1]\nshutdownGrace: soon", `line 2: shutdownGrace: "soon" is not a duration: write it as 5s`},
		"bad header":                {"environments: [env1]\nrouting: {header: 'e v'}", "routing.header"},
		"unknown upstream TLS mode": {"environments: [env1]\nupstream: {tls: {mode: STRICT}}", `upstream.tls.mode "STRICT"`},
		// Istio's agent/validation.go ValidateTLS.
		"MUTUAL without certificate": {"environments: [env1]\nupstream: {tls: {mode: MUTUAL, privateKey: k}}", "client certificate required for mutual tls"},
		"MUTUAL without key":         {"environments: [env1]\nupstream: {tls: {mode: MUTUAL, clientCertificate: c}}", "private key required for mutual tls"},
		"ISTIO_MUTUAL with files":    {"environments: [env1]\nupstream: {tls: {mode: ISTIO_MUTUAL, caCertificates: ca.pem}}", "ISTIO_MUTUAL uses the mesh's certificates"},
		"DISABLE with a CA":          {"environments: [env1]\nupstream: {tls: {caCertificates: ca.pem}}", "need a mode other than DISABLE"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			// A user writes YAML, not Go: no error names a Go type or a
			// YAML tag.
			for _, goTerm := range []string{"config.", "time.Duration", "!!", "unmarshal"} {
				if strings.Contains(err.Error(), goTerm) {
					t.Errorf("%v names %q", err, goTerm)
				}
			}
		})
	}
}

func TestHeaderNameLowerCased(t *testing.T) {
	c, err := Parse([]byte("discovery: {static: {env1: ['127.0.0.1:1']}}\nrouting: {header: X-Env}"))
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := c.Table()
	if err != nil || tbl.EnvHeader() != "x-env" {
		t.Fatalf("header %q, %v", tbl.EnvHeader(), err)
	}
}
