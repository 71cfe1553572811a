package route

import (
	"fmt"
	"strings"
	"testing"
)

func seedTable(t testing.TB) *Table {
	t.Helper()
	var envs []EnvRule
	for _, env := range []string{"env1", "env2", "env10", "a,b"} {
		envs = append(envs, EnvRule{Value: env, Destination: Destination{Namespace: env, Service: "app-service", Port: "grpc"}})
	}
	tbl, err := NewEnvTable("Env", envs)
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func envReq(values ...string) *Request {
	if values == nil {
		return &Request{Headers: map[string][]string{}}
	}
	return &Request{Headers: map[string][]string{"env": values}}
}

func dest(r *Rule) string { return r.Action.Destinations[0].Namespace }

func TestEnvTable(t *testing.T) {
	tbl := seedTable(t)
	for name, tc := range map[string]struct {
		values []string
		want   string // namespace, "" for no route
	}{
		"exact":                       {[]string{"env1"}, "env1"},
		"other env":                   {[]string{"env2"}, "env2"},
		"no prefix match":             {[]string{"env"}, ""},
		"no suffix match":             {[]string{"env1x"}, ""},
		"case-sensitive value":        {[]string{"ENV1"}, ""},
		"missing":                     {nil, ""},
		"empty":                       {[]string{""}, ""},
		"whitespace kept":             {[]string{" env1"}, ""},
		"two values joined, no match": {[]string{"env1", "env2"}, ""},
		"two values joined, match":    {[]string{"a", "b"}, "a,b"},
		"one value with comma":        {[]string{"a,b"}, "a,b"},
		"three values":                {[]string{"a", "b", ""}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			r, ok := tbl.Route(envReq(tc.values...))
			got := ""
			if ok {
				got = dest(r)
			}
			if ok != (tc.want != "") || got != tc.want {
				t.Fatalf("Route(%q) = %q, %v; want %q", tc.values, got, ok, tc.want)
			}
		})
	}
	if tbl.EnvHeader() != "env" {
		t.Errorf("header %q, want lower case env", tbl.EnvHeader())
	}
}

func TestNewEnvTableRejects(t *testing.T) {
	d := Destination{Namespace: "env1", Service: "app-service", Port: "grpc"}
	for name, tc := range map[string]struct {
		header string
		rules  []EnvRule
	}{
		"empty header":    {"", []EnvRule{{"env1", d}}},
		"empty value":     {"env", []EnvRule{{"", d}}},
		"duplicate value": {"env", []EnvRule{{"env1", d}, {"env1", d}}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewEnvTable(tc.header, tc.rules); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestNoRouteErrorSaysWhy(t *testing.T) {
	for _, tc := range []struct {
		e    NoRouteError
		want string
	}{
		{NoRouteError{Header: "env"}, `no route: the request has no "env" header`},
		{NoRouteError{Header: "env", Values: []string{""}}, `no route: the "env" header is empty`},
		{NoRouteError{Header: "env", Values: []string{"env9"}}, `no route for env="env9"`},
		{NoRouteError{Header: "env", Values: []string{"a", "b"}}, `no route for env="a,b"`},
		{NoRouteError{Path: "/a.B/C"}, `no route matched /a.B/C`},
		// A client's value is echoed cut short, never whole.
		{NoRouteError{Header: "env", Values: []string{strings.Repeat("x", 1<<20)}}, `no route for env="` + strings.Repeat("x", 64) + `...(1048576 bytes)"`},
		{NoRouteError{Header: "env", Values: []string{"a", "b", "c", "d", "e", "f"}}, `no route for env="a,b,c,d,...(6 values)"`},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.e, got, tc.want)
		}
	}
}

func TestRouteDoesNotAllocate(t *testing.T) {
	tbl := seedTable(t)
	general := NewTable([]Rule{
		{Matches: []Match{{Headers: []HeaderMatch{{Name: "env", Match: StringMatch{Kind: Prefix, Value: "pr-"}}}}}},
		{Matches: []Match{{URI: &StringMatch{Kind: Prefix, Value: "/echo."}, Headers: []HeaderMatch{{Name: "x", Match: StringMatch{Kind: Present}}}}}},
	})
	for _, req := range []*Request{envReq("env1"), envReq("nope"), envReq("a", "b"), envReq(), {Path: "/echo.E/C", Headers: map[string][]string{"x": {""}}}} {
		for _, tb := range []*Table{tbl, general} {
			if n := testing.AllocsPerRun(100, func() { tb.Route(req) }); n != 0 {
				t.Errorf("Route(%+v) allocates %v times", req, n)
			}
		}
	}
}

// FuzzRoute checks the environment table against the definition: join the
// values with "," and look the result up exactly.
func FuzzRoute(f *testing.F) {
	f.Add("env1", "", 1)
	f.Add("env1", "env2", 2)
	f.Add("a", "b", 2)
	f.Add("", "", 0)
	f.Add("ENV1", "", 1)
	f.Add("env1,", "", 1)
	f.Fuzz(func(t *testing.T, a, b string, n int) {
		tbl := seedTable(t)
		values := []string{a, b}[:max(0, min(n, 2))]
		r, ok := tbl.Route(envReq(values...))
		i, wantOK := tbl.exact[strings.Join(values, ",")]
		if len(values) == 0 {
			wantOK = false
		}
		if ok != wantOK || (ok && r != &tbl.rules[i]) {
			t.Fatalf("Route(%q) = %v, %v; reference %v", values, r, ok, wantOK)
		}
	})
}

func BenchmarkRoute(b *testing.B) {
	tbl := seedTable(b)
	for _, tc := range []struct {
		name string
		req  *Request
	}{{"hit", envReq("env1")}, {"miss", envReq("env9")}, {"joined", envReq("env1", "env2")}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tbl.Route(tc.req)
			}
		})
	}
}

// A destination's names are its service's, whichever destinations were
// asked before (more than the cache's slots, so pairs collide), and asking
// again makes nothing: a call's destination used to cost two allocations.
func TestDestinationNames(t *testing.T) {
	for i := range 3 * len(nameCache) {
		d := Destination{Service: "app-service", Namespace: fmt.Sprintf("env%d", i)}
		if k, h := d.Key(), d.Host(); k != "app-service."+d.Namespace || h != "app-service."+d.Namespace+".svc.cluster.local" {
			t.Fatalf("%+v: key %q host %q", d, k, h)
		}
	}
	d := Destination{Service: "app-service", Namespace: "env1"}
	if n := testing.AllocsPerRun(100, func() { _, _ = d.Key(), d.Host() }); n != 0 {
		t.Fatalf("%.1f allocations for a destination's names asked again, want 0", n)
	}
	if h := (Destination{NoService: "nowhere"}).Host(); h != "" {
		t.Fatalf("no service: host %q", h)
	}
}
