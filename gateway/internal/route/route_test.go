package route

import (
	"strings"
	"testing"
)

func seedTable(t testing.TB) *Table {
	t.Helper()
	var rules []Rule
	for _, env := range []string{"env1", "env2", "env10", "a,b"} {
		rules = append(rules, Rule{Value: env, Destination: Destination{Namespace: env, Service: "app-service", Port: "grpc"}})
	}
	tbl, err := NewTable("Env", rules)
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func TestRoute(t *testing.T) {
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
			d, ok := tbl.Route(tc.values)
			if got := d.Namespace; ok != (tc.want != "") || got != tc.want {
				t.Fatalf("Route(%q) = %q, %v; want %q", tc.values, got, ok, tc.want)
			}
		})
	}
	if tbl.Header() != "env" {
		t.Errorf("header %q, want lower case env", tbl.Header())
	}
}

func TestNewTableRejects(t *testing.T) {
	d := Destination{Namespace: "env1", Service: "app-service", Port: "grpc"}
	for name, tc := range map[string]struct {
		header string
		rules  []Rule
	}{
		"empty header":    {"", []Rule{{"env1", d}}},
		"empty value":     {"env", []Rule{{"", d}}},
		"duplicate value": {"env", []Rule{{"env1", d}, {"env1", d}}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewTable(tc.header, tc.rules); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestNoRouteErrorSaysWhy(t *testing.T) {
	for _, tc := range []struct {
		values []string
		want   string
	}{
		{nil, `no route: the request has no "env" header`},
		{[]string{""}, `no route: the "env" header is empty`},
		{[]string{"env9"}, `no route for env="env9"`},
		{[]string{"a", "b"}, `no route for env="a,b"`},
	} {
		if got := (&NoRouteError{Header: "env", Values: tc.values}).Error(); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.values, got, tc.want)
		}
	}
}

func TestRouteDoesNotAllocate(t *testing.T) {
	tbl := seedTable(t)
	for _, values := range [][]string{{"env1"}, {"nope"}, {"a", "b"}, nil} {
		if n := testing.AllocsPerRun(100, func() { tbl.Route(values) }); n != 0 {
			t.Errorf("Route(%q) allocates %v times", values, n)
		}
	}
}

// FuzzRoute checks Route against the definition: join the values with ","
// and look the result up exactly.
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
		d, ok := tbl.Route(values)
		want, wantOK := tbl.routes[strings.Join(values, ",")]
		if len(values) == 0 {
			wantOK = false
			want = Destination{}
		}
		if ok != wantOK || d != want {
			t.Fatalf("Route(%q) = %v, %v; reference %v, %v", values, d, ok, want, wantOK)
		}
	})
}

func BenchmarkRoute(b *testing.B) {
	tbl := seedTable(b)
	for _, tc := range []struct {
		name   string
		values []string
	}{{"hit", []string{"env1"}}, {"miss", []string{"env9"}}, {"joined", []string{"env1", "env2"}}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tbl.Route(tc.values)
			}
		})
	}
}
