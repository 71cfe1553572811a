package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/envgate/envgate/gateway/internal/forwarded"
	"github.com/envgate/envgate/gateway/internal/route"
)

// fakeUpstreams answers with whatever its function field says.
type fakeUpstreams struct {
	conn func(route.Destination) (grpc.ClientConnInterface, error)
}

func (f fakeUpstreams) Conn(d route.Destination) (grpc.ClientConnInterface, error) { return f.conn(d) }

// destConn is a connection that only remembers which destination it is for.
type destConn struct {
	grpc.ClientConnInterface
	dest route.Destination
}

func testTable(t testing.TB) *route.Table {
	t.Helper()
	var rules []route.EnvRule
	for _, env := range []string{"env1", "env2"} {
		rules = append(rules, route.EnvRule{Value: env, Destination: route.Destination{Namespace: env, Service: "app-service", Port: "grpc"}})
	}
	tbl, err := route.NewEnvTable("env", rules)
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func testDirector(t testing.TB, healthy bool) func(ctx context.Context, method string) (context.Context, grpc.ClientConnInterface, error) {
	tbl := testTable(t)
	return NewDirector(func() *route.Table { return tbl }, fakeUpstreams{conn: func(d route.Destination) (grpc.ClientConnInterface, error) {
		if !healthy {
			return nil, errors.New("no healthy upstream")
		}
		return destConn{dest: d}, nil
	}}, func() float64 { return 0 }, nil)
}

func incoming(md metadata.MD) context.Context {
	ctx := metadata.NewIncomingContext(context.Background(), md)
	return peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5555}})
}

// rawStream is a server transport stream that hands over the request's
// metadata uncopied, as grpcfront's does.
type rawStream struct {
	grpc.ServerTransportStream
	md metadata.MD
}

func (r rawStream) IncomingMetadata() metadata.MD { return r.md }

// The upstream's metadata is the client's less the pseudo-headers and
// hop-by-hop fields, with Envoy's edge fields: from metadata the director
// may change (gRPC's server's, copied) and from metadata it must leave as
// it is (grpcfront's, shared with the call's context).
func TestDirectorOutgoingMetadata(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw=%v", raw), func(t *testing.T) { testDirectorOutgoingMetadata(t, raw) })
	}
}

func testDirectorOutgoingMetadata(t *testing.T, raw bool) {
	dir := testDirector(t, true)
	in := metadata.MD{
		"env":              {"env2"},
		":authority":       {"gw.example:443"},
		"user-agent":       {"grpcurl/1.9"},
		"connection":       {"close"},
		"keep-alive":       {"timeout=5"},
		"x-forwarded-for":  {"203.0.113.1", "198.51.100.2"},
		"x-custom-bin":     {"\x00\x01"},
		"grpc-trace-bin":   {"\x02"},
		"proxy-connection": {"x"},
		"content-length":   {"12"},
	}
	ctx := incoming(in)
	before := in.Copy()
	if raw {
		ctx = grpc.NewContextWithServerTransportStream(ctx, rawStream{md: in})
	}
	ctx, conn, err := dir(ctx, "/pkg.Svc/Method")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, before) {
		t.Errorf("the request's metadata changed: %v, was %v", in, before)
	}
	if d := conn.(*Routed).ClientConnInterface.(destConn).dest; d.Namespace != "env2" || d.Service != "app-service" {
		t.Fatalf("routed to %v", d)
	}
	out, _ := metadata.FromOutgoingContext(ctx)
	for _, k := range []string{":authority", "connection", "keep-alive", "proxy-connection", "content-length"} {
		if _, ok := out[k]; ok {
			t.Errorf("%s forwarded", k)
		}
	}
	for k, want := range map[string]string{
		"env":               "env2",
		"x-forwarded-for":   "203.0.113.1, 198.51.100.2, 10.1.2.3",
		"x-forwarded-proto": "http",
		"x-custom-bin":      "\x00\x01",
		"grpc-trace-bin":    "\x02",
	} {
		if got := strings.Join(out[k], ","); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

// x-forwarded-for is bounded whatever the client sends: its rightmost
// entries are kept while they fit, and the client's address is always last.
func TestDirectorForwardedForIsBounded(t *testing.T) {
	dir := testDirector(t, true)
	var many []string
	for i := range 5000 {
		many = append(many, fmt.Sprintf("203.0.%d.%d", i/256, i%256))
	}
	ctx, _, err := dir(incoming(metadata.MD{"env": {"env1"}, "x-forwarded-for": {strings.Join(many[:2500], ", "), strings.Join(many[2500:], ",")}}), "/pkg.Svc/Method")
	if err != nil {
		t.Fatal(err)
	}
	out, _ := metadata.FromOutgoingContext(ctx)
	xff := out["x-forwarded-for"]
	if len(xff) != 1 || len(xff[0]) > forwarded.MaxForwardedFor {
		t.Fatalf("x-forwarded-for: %d values, %d bytes; want one value of at most %d", len(xff), len(xff[0]), forwarded.MaxForwardedFor)
	}
	entries := strings.Split(xff[0], ", ")
	if last := entries[len(entries)-1]; last != "10.1.2.3" {
		t.Fatalf("last entry %q, want the client's address", last)
	}
	if prev := entries[len(entries)-2]; prev != many[len(many)-1] {
		t.Fatalf("entry before the client's %q, want the client's own rightmost %q", prev, many[len(many)-1])
	}
	if len(entries) < 20 {
		t.Fatalf("only %d entries kept", len(entries))
	}
}

func TestDirectorRefusals(t *testing.T) {
	for name, tc := range map[string]struct {
		md      metadata.MD
		healthy bool
		code    codes.Code
		msg     string
	}{
		"no header":   {metadata.MD{}, true, codes.Unimplemented, `envgate: no route: the request has no "env" header`},
		"unknown":     {metadata.MD{"env": {"prod"}}, true, codes.Unimplemented, `envgate: no route for env="prod"`},
		"unavailable": {metadata.MD{"env": {"env1"}}, false, codes.Unavailable, "no healthy upstream (environment env1 to app-service.env1.svc.cluster.local:grpc)"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := testDirector(t, tc.healthy)(incoming(tc.md), "/a.B/C")
			if st := status.Convert(err); st.Code() != tc.code || st.Message() != tc.msg {
				t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
}

// FuzzDirector feeds arbitrary `env` values: the director must route exactly
// the configured environments and refuse everything else with UNIMPLEMENTED,
// never panic, never pick another destination.
func FuzzDirector(f *testing.F) {
	f.Add("env1", "")
	f.Add("env1", "env2")
	f.Add("", "")
	f.Add("../env1", "")
	f.Add("env1.svc.cluster.local", "")
	f.Add("ENV1", "x")
	f.Fuzz(func(t *testing.T, a, b string) {
		md := metadata.MD{"env": {a}}
		if b != "" {
			md["env"] = append(md["env"], b)
		}
		joined := strings.Join(md["env"], ",")
		_, conn, err := testDirector(t, true)(incoming(md), "/a.B/C")
		if joined == "env1" || joined == "env2" {
			if err != nil || conn.(*Routed).ClientConnInterface.(destConn).dest.Namespace != joined {
				t.Fatalf("%q: %v, %v", md["env"], conn, err)
			}
			return
		}
		if status.Code(err) != codes.Unimplemented || conn != nil {
			t.Fatalf("%q: got %v, %v; want UNIMPLEMENTED", md["env"], conn, err)
		}
	})
}

func BenchmarkDirector(b *testing.B) {
	dir := testDirector(b, true)
	ctx := incoming(metadata.MD{
		"env": {"env1"}, ":authority": {"gw:443"}, "user-agent": {"grpc-go/1.85"},
		"x-request-id": {"abc"}, "traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
	})
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := dir(ctx, "/echo.EchoService/Call"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCodecFrame(b *testing.B) {
	c := newCodec("proto")
	buf := mem.BufferSlice{mem.SliceBuffer(make([]byte, 100))}
	b.ReportAllocs()
	var f frame
	for b.Loop() {
		if err := c.Unmarshal(buf, &f); err != nil {
			b.Fatal(err)
		}
		out, err := c.Marshal(&f)
		if err != nil || out.Len() != 100 {
			b.Fatal(err)
		}
	}
}
