// Package paritytest is the Istio parity table: VirtualService objects, a
// request, and what Istio's ingress gateway does with it, each row citing
// the Istio or Envoy source it follows. The virtualservice package checks
// every row against its merge; the gateway's tests run every row through
// real calls to real backends and through `gateway explain`.
package paritytest

import (
	"fmt"
	"strings"
)

// Row is one routing decision.
type Row struct {
	Name string
	// Cite names the Istio or Envoy source file and function the row follows.
	Cite string
	// YAML holds the VirtualService objects; destinations are
	// app-service.<namespace>.svc.cluster.local.
	YAML string
	Req  Request
	// Want is the namespace whose app-service takes the call, "" when
	// there is no route (Envoy: 404, gRPC UNIMPLEMENTED).
	Want string
}

// Request is what the client sends.
type Request struct {
	Method    string // /package.Service/Method
	Authority string
	// Headers are name, value pairs; a name may repeat.
	Headers []string
}

// Refusal is an object Istio's admission webhook refuses: it routes
// nothing, and the reason names the field.
type Refusal struct {
	Name, Cite, YAML string
	// Why is part of the reason the object is refused for.
	Why string
}

// Gateway is the Istio Gateway the rows bind to, and ProxyNamespace the
// namespace the gateway's proxies run in.
const (
	Gateway        = "default/common-istio-gateway"
	ProxyNamespace = "istio-system"
)

const (
	citeHeader       = "istio pilot/pkg/networking/core/route/route.go translateHeaderMatch; envoy source/common/http/header_utility.cc HeaderUtility::matchHeaders"
	citeJoined       = "envoy source/common/http/header_utility.cc HeaderUtility::getAllOfHeaderAsString (values joined with \",\")"
	citeWithout      = "istio pilot/pkg/networking/core/route/route.go TranslateRouteMatch (withoutHeaders: invert_match, treat_missing_header_as_empty); envoy source/common/http/header_utility.cc HeaderUtility::matchHeaders"
	citeURI          = "istio pilot/pkg/networking/core/route/route.go TranslateRouteMatch; envoy source/common/router/config_impl.cc PathRouteEntryImpl, PrefixRouteEntryImpl, RegexRouteEntryImpl ::matches"
	citeAuthority    = "istio pilot/pkg/networking/core/route/route.go TranslateRouteMatch (authority: a :authority header matcher)"
	citeBlocks       = "istio pilot/pkg/networking/core/route/route.go BuildHTTPRoutesForVirtualService (one Envoy route per match block), TranslateRouteMatch (a block's conditions in one RouteMatch)"
	citeFirstMatch   = "envoy source/common/router/config_impl.cc VirtualHostImpl::getRouteFromEntries"
	citeNoMatch      = "istio pilot/pkg/networking/core/route/route.go TranslateRouteMatch (no match: prefix \"/\")"
	citeOrder        = "istio pilot/pkg/model/virtualservice_controller.go sortMergedVirtualServicesByCreationTime, pilot/pkg/model/config.go configCompareByCreationTime"
	citeCatchAllSort = "istio pilot/pkg/networking/core/route/route.go SortVHostRoutes, IsCatchAllRoute"
	citeVirtualHost  = "istio pilot/pkg/networking/core/gateway.go buildGatewayHTTPRouteConfig (vHostDedupMap); envoy source/common/router/config_impl.cc RouteMatcher::findVirtualHost"
	citeShortHost    = "istio pilot/pkg/model/config.go ResolveShortnameToFQDN"
	citeCatchAll     = "istio pilot/pkg/networking/core/route/route.go BuildHTTPRoutesForVirtualService, SortVHostRoutes, IsCatchAllRoute"
	citeGateway      = "istio pilot/pkg/model/config.go resolveGatewayName; pilot/pkg/model/push_context.go VirtualServicesForGateway"
	citeExportTo     = "istio pilot/pkg/model/push_context.go VirtualServicesForGateway (objects visible in the proxy's namespace)"
)

// Rows are the routing decisions.
var Rows = []Row{
	// HTTPMatchRequest.headers: exact, prefix, regex (RE2 full match).
	{"header exact", citeHeader, VS("a", T0, One(`    - headers: {env: {exact: env1}}`, "app-service.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "env1"), "env1"},
	{"header prefix", citeHeader, VS("a", T0, One(`    - headers: {env: {prefix: pr-}}`, "app-service.prs.svc.cluster.local")), req("/x.Y/Z", "h", "env", "pr-42"), "prs"},
	{"header regex full match", citeHeader, VS("a", T0, One(`    - headers: {env: {regex: "env[0-9]"}}`, "app-service.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "env1"), "env1"},
	{"header regex not partial", citeHeader, VS("a", T0, One(`    - headers: {env: {regex: "env[0-9]"}}`, "app-service.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "xenv1x"), ""},
	// "headers: {x: {}}" matches when the header is present, any value.
	{"header presence", citeHeader, VS("a", T0, One(`    - headers: {x-debug: {}}`, "app-service.dbg.svc.cluster.local")), req("/x.Y/Z", "h", "x-debug", ""), "dbg"},
	{"header presence absent", citeHeader, VS("a", T0, One(`    - headers: {x-debug: {}}`, "app-service.dbg.svc.cluster.local")), req("/x.Y/Z", "h"), ""},
	// Header names are case-insensitive, values case-sensitive.
	{"header name case", citeHeader, VS("a", T0, One(`    - headers: {Env: {exact: env1}}`, "app-service.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "env1"), "env1"},
	{"header value case", citeHeader, VS("a", T0, One(`    - headers: {env: {exact: env1}}`, "app-service.env1.svc.cluster.local")), req("/x.Y/Z", "h", "env", "Env1"), ""},
	// Several values are joined with "," (Envoy).
	{"joined values", citeJoined, VS("a", T0, One(`    - headers: {env: {exact: "a,b"}}`, "app-service.ab.svc.cluster.local")), req("/x.Y/Z", "h", "env", "a", "env", "b"), "ab"},
	// withoutHeaders: the rule applies when the header does not match;
	// an absent header does not match, so the rule applies.
	{"withoutHeaders other value", citeWithout, VS("a", T0, One(`    - withoutHeaders: {env: {exact: prod}}`, "app-service.np.svc.cluster.local")), req("/x.Y/Z", "h", "env", "dev"), "np"},
	{"withoutHeaders absent", citeWithout, VS("a", T0, One(`    - withoutHeaders: {env: {exact: prod}}`, "app-service.np.svc.cluster.local")), req("/x.Y/Z", "h"), "np"},
	{"withoutHeaders equal", citeWithout, VS("a", T0, One(`    - withoutHeaders: {env: {exact: prod}}`, "app-service.np.svc.cluster.local")), req("/x.Y/Z", "h", "env", "prod"), ""},
	// Istio 1.22 and later set Envoy's treat_missing_header_as_empty on
	// withoutHeaders (route.go translateHeaderMatch): an absent header
	// is the empty string, which regex ".*" matches, so the rule does
	// not apply; a presence match still sees it absent.
	{"withoutHeaders absent is empty", citeWithout, VS("a", T0, One(`    - withoutHeaders: {env: {regex: ".*"}}`, "app-service.np.svc.cluster.local")), req("/x.Y/Z", "h"), ""},
	{"withoutHeaders absent presence", citeWithout, VS("a", T0, One(`    - withoutHeaders: {env: {}}`, "app-service.np.svc.cluster.local")), req("/x.Y/Z", "h"), "np"},
	{"withoutHeaders present value only", citeWithout, VS("a", T0, One(`    - withoutHeaders: {env: {regex: "prod.*"}}`, "app-service.np.svc.cluster.local")), req("/x.Y/Z", "h"), "np"},
	// uri on the gRPC path /package.Service/Method.
	{"uri exact", citeURI, VS("a", T0, One(`    - uri: {exact: /echo.EchoService/Call}`, "app-service.c.svc.cluster.local")), req("/echo.EchoService/Call", "h"), "c"},
	{"uri prefix", citeURI, VS("a", T0, One(`    - uri: {prefix: /echo.EchoService/}`, "app-service.c.svc.cluster.local")), req("/echo.EchoService/BidiStream", "h"), "c"},
	{"uri regex", citeURI, VS("a", T0, One(`    - uri: {regex: "/echo\\.EchoService/(Call|ServerStream)"}`, "app-service.c.svc.cluster.local")), req("/echo.EchoService/ClientStream", "h"), ""},
	{"authority", citeAuthority, VS("a", T0, One(`    - authority: {prefix: api.}`, "app-service.api.svc.cluster.local")), req("/x.Y/Z", "api.example.com"), "api"},
	// Conditions in one block are ANDed, blocks are ORed.
	{"AND within a block", citeBlocks, VS("a", T0, One("    - headers: {env: {exact: env1}}\n      uri: {prefix: /echo.}", "app-service.env1.svc.cluster.local")), req("/other.S/M", "h", "env", "env1"), ""},
	{"OR across blocks", citeBlocks, VS("a", T0, One("    - headers: {env: {exact: env1}}\n    - uri: {prefix: /echo.}", "app-service.env1.svc.cluster.local")), req("/echo.S/M", "h", "env", "env9"), "env1"},
	// Rules in order, first match wins.
	{"first match wins", citeFirstMatch, VS("a", T0, One(`    - uri: {prefix: /echo.}`, "app-service.first.svc.cluster.local")+"\n"+One(`    - headers: {env: {exact: env1}}`, "app-service.second.svc.cluster.local")), req("/echo.S/M", "h", "env", "env1"), "first"},
	// A rule without match takes everything.
	{"no match is catch-all", citeNoMatch, VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]"), req("/any.S/M", "h"), "all"},
	// Objects merge oldest first; the same time breaks ties by name.
	{"older object first", citeOrder, VS("b", T0, One(`    - uri: {prefix: /}`+"\n      headers: {env: {exact: e}}", "app-service.older.svc.cluster.local")) + VS("a", T1, One(`    - headers: {env: {exact: e}}`, "app-service.newer.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "older"},
	{"tie broken by name", citeOrder, VS("b", T0, One(`    - headers: {env: {exact: e}}`, "app-service.b.svc.cluster.local")) + VS("a", T0, One(`    - headers: {env: {exact: e}}`, "app-service.a.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "a"},
	{"catch-all moved last", citeCatchAllSort, VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]") + VS("b", T1, One(`    - headers: {env: {exact: e}}`, "app-service.e.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "e"},
	{"catch-all prefix / moved last", citeCatchAllSort, VS("a", T0, One(`    - uri: {prefix: /}`, "app-service.all.svc.cluster.local")) + VS("b", T1, One(`    - headers: {env: {exact: e}}`, "app-service.e.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "e"},
	// hosts: the object applies to these authorities only.
	{"hosts exclude", citeVirtualHost, strings.Replace(VS("a", T0, One(`    - headers: {env: {exact: e}}`, "app-service.e.svc.cluster.local")), `hosts: ["*"]`, `hosts: ["api.example.com"]`, 1), req("/x.Y/Z", "other.example.com:443", "env", "e"), ""},
	{"hosts include", citeVirtualHost, strings.Replace(VS("a", T0, One(`    - headers: {env: {exact: e}}`, "app-service.e.svc.cluster.local")), `hosts: ["*"]`, `hosts: ["*.example.com"]`, 1), req("/x.Y/Z", "api.example.com:443", "env", "e"), "e"},
	// Virtual hosts. Istio makes one per host name of the bound objects,
	// each with the routes of every object naming it
	// (pilot/pkg/networking/core/gateway.go buildGatewayHTTPRouteConfig,
	// vHostDedupMap); Envoy routes a request by exactly one, chosen by
	// its authority: exact, then the longest suffix wildcard, then "*",
	// case-insensitively and without the port
	// (source/common/router/config_impl.cc RouteMatcher::findVirtualHost).
	{"specific host before *", citeVirtualHost, VS("a", T0, One(`    - headers: {env: {exact: e}}`, "app-service.star.svc.cluster.local")) +
		VSHosts("b", T1, `["api.example.com"]`, One(`    - headers: {env: {exact: e}}`, "app-service.api.svc.cluster.local")), req("/x.Y/Z", "api.example.com:443", "env", "e"), "api"},
	{"* for other hosts", citeVirtualHost, VS("a", T0, One(`    - headers: {env: {exact: e}}`, "app-service.star.svc.cluster.local")) +
		VSHosts("b", T1, `["api.example.com"]`, One(`    - headers: {env: {exact: e}}`, "app-service.api.svc.cluster.local")), req("/x.Y/Z", "web.example.com", "env", "e"), "star"},
	{"no fall-through to *", citeVirtualHost, VSHosts("b", T0, `["api.example.com"]`, One(`    - headers: {env: {exact: other}}`, "app-service.api.svc.cluster.local")) +
		VS("a", T1, "  - route: [{destination: {host: app-service.star.svc.cluster.local}}]"), req("/x.Y/Z", "api.example.com", "env", "e"), ""},
	{"longest suffix wildcard", citeVirtualHost, VSHosts("a", T0, `["*.example.com"]`, One(`    - headers: {env: {exact: e}}`, "app-service.wide.svc.cluster.local")) +
		VSHosts("b", T1, `["*.api.example.com"]`, One(`    - headers: {env: {exact: e}}`, "app-service.deep.svc.cluster.local")), req("/x.Y/Z", "v1.api.example.com", "env", "e"), "deep"},
	{"wildcard needs a label", citeVirtualHost, VSHosts("a", T0, `["*.example.com"]`, One(`    - headers: {env: {exact: e}}`, "app-service.wide.svc.cluster.local")), req("/x.Y/Z", "example.com", "env", "e"), ""},
	{"authority case and port", citeVirtualHost, VSHosts("a", T0, `["API.example.com"]`, One(`    - headers: {env: {exact: e}}`, "app-service.api.svc.cluster.local")), req("/x.Y/Z", "Api.Example.COM:8443", "env", "e"), "api"},
	// A host without dots is a service of the object's namespace
	// (pilot/pkg/model/config.go ResolveShortnameToFQDN).
	{"short host is a service FQDN", citeShortHost, VSHosts("a", T0, `["app"]`, One(`    - headers: {env: {exact: e}}`, "app-service.app.svc.cluster.local")), req("/x.Y/Z", "app.default.svc.cluster.local", "env", "e"), "app"},
	{"short host not as written", citeShortHost, VSHosts("a", T0, `["app"]`, One(`    - headers: {env: {exact: e}}`, "app-service.app.svc.cluster.local")), req("/x.Y/Z", "app", "env", "e"), ""},
	// Catch-alls (route.go): one Envoy route per match block
	// (BuildHTTPRoutesForVirtualService); only a catch-all block moves
	// to the end of its virtual host (SortVHostRoutes, IsCatchAllRoute:
	// prefix "/" or regex ".*", no header), the rule's other blocks
	// keep their place; rules after a catch-all route are dropped.
	{"catch-all block split", citeCatchAll, VS("a", T0, One("    - headers: {env: {exact: e}}\n    - uri: {prefix: /}", "app-service.a.svc.cluster.local")) +
		VS("b", T1, One(`    - headers: {env: {exact: e}}`, "app-service.b.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "a"},
	{"catch-all block still last", citeCatchAll, VS("a", T0, One("    - headers: {env: {exact: e}}\n    - uri: {prefix: /}", "app-service.a.svc.cluster.local")) +
		VS("b", T1, One(`    - headers: {env: {exact: f}}`, "app-service.b.svc.cluster.local")), req("/x.Y/Z", "h", "env", "f"), "b"},
	{"regex .* is catch-all", citeCatchAll, VS("a", T0, One(`    - uri: {regex: ".*"}`, "app-service.all.svc.cluster.local")) + VS("b", T1, One(`    - headers: {env: {exact: e}}`, "app-service.e.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "e"},
	{"rules after a catch-all dropped", citeCatchAll, VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]\n"+One(`    - headers: {env: {exact: e}}`, "app-service.e.svc.cluster.local")), req("/x.Y/Z", "h", "env", "e"), "all"},
	// spec.gateways resolve as Istio resolves them
	// (pilot/pkg/model/config.go resolveGatewayName): a short
	// name is in the object's namespace, "./name" too, "ns/name" as
	// written, "name.ns.svc.cluster.local" is ns/name; the gateway
	// here is default/common-istio-gateway.
	{"gateway short name elsewhere", citeGateway, InNS("other", VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
	{"gateway ns/name", citeGateway, InNS("other", BoundTo("default/common-istio-gateway", VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]"))), req("/x.Y/Z", "h"), "all"},
	{"gateway ./name", citeGateway, BoundTo("./common-istio-gateway", VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), "all"},
	{"gateway legacy FQDN", citeGateway, InNS("other", BoundTo("common-istio-gateway.default.svc.cluster.local", VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]"))), req("/x.Y/Z", "h"), "all"},
	{"gateway mesh", citeGateway, BoundTo("mesh", VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
	// spec.exportTo: the object must be visible in the gateway's
	// (proxy's) namespace, istio-system here (push_context.go).
	{"exportTo absent", citeExportTo, VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]"), req("/x.Y/Z", "h"), "all"},
	{"exportTo *", citeExportTo, ExportTo(`["*"]`, VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), "all"},
	{"exportTo . elsewhere", citeExportTo, ExportTo(`["."]`, VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
	{"exportTo gateway's ns", citeExportTo, ExportTo(`["istio-system"]`, VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), "all"},
	{"exportTo other ns", citeExportTo, ExportTo(`["team-a"]`, VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
	{"exportTo ~", citeExportTo, ExportTo(`["~"]`, VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]")), req("/x.Y/Z", "h"), ""},
	// Objects of another gateway are not merged.
	{"other gateway", citeGateway, strings.Replace(VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]"), "common-istio-gateway", "mesh", 1), req("/x.Y/Z", "h"), ""},
}

// Refusals are objects Istio's validation refuses.
var Refusals = []Refusal{
	// ValidateVirtualService: "virtual service must have at least one host".
	{"no hosts", "istio pkg/config/validation/validation.go ValidateVirtualService", strings.Replace(VS("a", T0, "  - route: [{destination: {host: app-service.all.svc.cluster.local}}]"), `hosts: ["*"]`, `hosts: []`, 1),
		"spec.hosts: virtual service must have at least one host"},
	// validateHTTPRouteDestinations: "total destination weight = 0".
	{"all weights zero", "istio pkg/config/validation/validation.go validateHTTPRouteDestinations", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}, weight: 0}, {destination: {host: app-service.b.svc.cluster.local}, weight: 0}]"),
		"total destination weight = 0"},
	// validateHTTPRetry: retryOn values from supportedRetryOnPolicies.
	{"unknown retryOn", "istio pkg/config/validation/validation.go validateHTTPRetry (supportedRetryOnPolicies)", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    retries: {attempts: 2, retryOn: \"5xx,sometimes\"}"),
		`"sometimes" is not a retry policy`},
	// validateHTTPRetry: "attempts cannot be negative", and
	// ValidateDuration on perTryTimeout.
	{"negative attempts", "istio pkg/config/validation/validation.go validateHTTPRetry", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    retries: {attempts: -1}"),
		"attempts cannot be negative"},
	{"perTryTimeout under 1ms", "istio pkg/config/validation/validation.go validateHTTPRetry, agent/validation.go ValidateDuration", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    retries: {attempts: 2, perTryTimeout: 500us}"),
		"duration must be greater than 1ms"},
	{"perTryTimeout finer than ms", "istio pkg/config/validation/validation.go validateHTTPRetry, agent/validation.go ValidateDuration", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    retries: {attempts: 2, perTryTimeout: 1500us}"),
		"only durations to ms precision are supported"},
	// validateStringMatch: "prefix string match should not be empty".
	{"empty uri prefix", "istio pkg/config/validation/validation.go validateStringMatch", VS("a", T0, One(`    - uri: {prefix: ""}`, "app-service.a.svc.cluster.local")),
		"match[0].uri: prefix string match should not be empty"},
	// ValidateVirtualService: each host passes agent.ValidateWildcardDomain
	// (a wildcard in the first label only; labels as DNS 1123; the top
	// level domain not all digits), and no two hosts overlap.
	{"invalid host", "istio pkg/config/validation/validation.go ValidateVirtualService, agent/validation.go ValidateWildcardDomain", strings.Replace(VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]"), `hosts: ["*"]`, `hosts: ["bad_host.example.com"]`, 1),
		`spec.hosts[0]: domain name "bad_host.example.com" invalid (label "bad_host" invalid)`},
	{"wildcard not first", "istio pkg/config/validation/validation.go ValidateVirtualService, agent/validation.go ValidateWildcardDomain", strings.Replace(VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]"), `hosts: ["*"]`, `hosts: ["api.*.example.com"]`, 1),
		`label "*" invalid`},
	{"numeric top level domain", "istio pkg/config/validation/validation.go ValidateVirtualService, agent/validation.go ValidateWildcardDomain", strings.Replace(VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]"), `hosts: ["*"]`, `hosts: ["example.123"]`, 1),
		`top level domain "123" cannot be all-numeric`},
	{"overlapping hosts", "istio pkg/config/validation/validation.go ValidateVirtualService (duplicate hosts, host.Name.Matches)", strings.Replace(VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]"), `hosts: ["*"]`, `hosts: ["*.example.com", "api.example.com"]`, 1),
		"duplicate hosts in virtual service: *.example.com & api.example.com"},
	// ValidateVirtualService: "http, tcp or tls must be provided".
	{"no routes at all", "istio pkg/config/validation/validation.go ValidateVirtualService", VS("a", T0, "    []"), "http, tcp or tls must be provided in virtual service"},
	// validateHTTPRouteMatchRequest: ValidateHTTPHeaderNameOrJwtClaimRoute.
	{"invalid match header name", "istio pkg/config/validation/virtualservice.go validateHTTPRouteMatchRequest, validation.go ValidateHTTPHeaderNameOrJwtClaimRoute", VS("a", T0, One(`    - headers: {"bad header": {exact: x}}`, "app-service.a.svc.cluster.local")),
		"match[0].headers: header name bad header is not a valid header name"},
	// validateHTTPRoute: ValidateHTTPHeaderOperationName on response
	// changes and request removals, ValidateHTTPHeaderValue on values.
	{"response sets Host", "istio pkg/config/validation/virtualservice.go validateHTTPRoute, validation.go ValidateHTTPHeaderOperationName", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    headers: {response: {set: {host: x}}}"),
		`headers.response.set: invalid header "host": cannot set Host header`},
	{"request removes a pseudo-header", "istio pkg/config/validation/virtualservice.go validateHTTPRoute, validation.go ValidateHTTPHeaderOperationName", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    headers: {request: {remove: [\":path\"]}}"),
		`headers.request.remove: invalid header ":path": header cannot have ":" prefix`},
	{"header value with a newline", "istio pkg/config/validation/virtualservice.go validateHTTPRoute, validation.go ValidateHTTPHeaderValue", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    headers: {request: {set: {x-a: \"a\\nb\"}}}"),
		"headers.request.set.x-a: header value configuration"},
	// ValidateHTTPHeaderWithAuthorityOperationName accepts :authority;
	// envgate does not rewrite the authority and says so.
	{"request sets the authority", "istio pkg/config/validation/virtualservice.go validateHTTPRoute, validation.go ValidateHTTPHeaderWithAuthorityOperationName (accepted by Istio; envgate does not implement it)", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    headers: {request: {set: {\":authority\": api.example.com}}}"),
		"rewriting the authority is not implemented by envgate"},
	// validateDestination: "invalid destination host *", ValidatePort.
	{"destination host *", "istio pkg/config/validation/validation.go validateDestination", VS("a", T0, "  - route: [{destination: {host: \"*\"}}]"), "destination.host: invalid destination host *"},
	{"destination port out of range", "istio pkg/config/validation/validation.go validateDestination, agent/validation.go ValidatePort", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local, port: {number: 70000}}}]"),
		"destination.port.number: port number 70000 must be in the range 1..65535"},
	// validateHTTPRoute: agent.ValidateDuration on timeout.
	{"timeout finer than ms", "istio pkg/config/validation/virtualservice.go validateHTTPRoute, agent/validation.go ValidateDuration", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    timeout: 1500us"),
		"timeout: only durations to ms precision are supported"},
	{"timeout zero", "istio pkg/config/validation/virtualservice.go validateHTTPRoute, agent/validation.go ValidateDuration", VS("a", T0, "  - route: [{destination: {host: app-service.a.svc.cluster.local}}]\n    timeout: 0s"),
		"timeout: duration must be greater than 1ms"},
}

// T0 and T1 are creation times, T0 the older.
const T0, T1 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"

// VS renders one VirtualService bound to the seed's gateway.
func VS(name, created, http string) string {
	return fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s, namespace: default, creationTimestamp: "%s"}
spec:
  hosts: ["*"]
  gateways: [common-istio-gateway]
  http:
%s
`, name, created, http)
}

// VSHosts is VS with its own hosts.
func VSHosts(name, created, hosts, http string) string {
	return strings.Replace(VS(name, created, http), `hosts: ["*"]`, "hosts: "+hosts, 1)
}

// One is a rule with one match and one destination.
func One(match, dest string) string {
	return fmt.Sprintf("  - match:\n%s\n    route: [{destination: {host: %s}}]", match, dest)
}

// InNS moves an object to namespace ns.
func InNS(ns, y string) string { return strings.Replace(y, "namespace: default", "namespace: "+ns, 1) }

// ExportTo sets an object's spec.exportTo.
func ExportTo(list, y string) string {
	return strings.Replace(y, "  gateways:", "  exportTo: "+list+"\n  gateways:", 1)
}

// BoundTo binds an object to g instead of common-istio-gateway.
func BoundTo(g, y string) string {
	return strings.Replace(y, "gateways: [common-istio-gateway]", "gateways: ["+g+"]", 1)
}

func req(method, authority string, headers ...string) Request {
	return Request{Method: method, Authority: authority, Headers: headers}
}

// HTTPRow is one HTTP request's fate: routed (and perhaps rewritten),
// redirected or answered by the gateway.
type HTTPRow struct {
	Name, Cite, YAML string
	Req              HTTPRequest
	Want             HTTPAnswer
}

// HTTPRequest is what an HTTP client sends.
type HTTPRequest struct {
	Method, Path, Authority string
	Headers                 []string // name, value pairs
}

// HTTPAnswer is what the client gets.
type HTTPAnswer struct {
	Status int
	// Env is the namespace whose app-service answered ("": the gateway
	// did), Path the path and query it was sent, Host the authority it
	// was sent ("": not checked).
	Env, Path, Host string
	// Location and Body are the gateway's own answer's.
	Location, Body string
}

const (
	citeHTTPPath     = "envoy source/common/router/config_impl.cc PathRouteEntryImpl::matches, RegexRouteEntryImpl::matches (the path once the query string is removed), PrefixRouteEntryImpl::matches (the whole :path)"
	citeMethod       = "istio pilot/pkg/networking/core/route/route.go TranslateRouteMatch (method: a :method header matcher)"
	citeRewrite      = "istio pilot/pkg/networking/core/route/route.go translateRoute (rewrite.uri: prefix_rewrite; rewrite.authority: host_rewrite_literal); envoy source/common/router/config_impl.cc RouteEntryImplBase::currentUrlPathAfterRewriteWithMatchedPath"
	citeRedirect     = "istio pilot/pkg/networking/core/route/route.go ApplyRedirect; envoy source/common/router/config_impl.cc RouteEntryImplBase::newUri"
	citeDirect       = "istio pilot/pkg/networking/core/route/route.go ApplyDirectResponse; envoy source/common/router/config_impl.cc DirectResponseEntry"
	citeHTTPNoRoute  = "envoy source/common/router/router.cc Filter::decodeHeaders (no route: 404, route_not_found)"
	hostEnv1, hostE2 = "app-service.env1.svc.cluster.local", "app-service.env2.svc.cluster.local"
)

func get(path string, headers ...string) HTTPRequest {
	return HTTPRequest{Method: "GET", Path: path, Authority: "gw.example.com", Headers: headers}
}

// twoWay routes a match to env1 and everything else to env2.
func twoWay(match string) string {
	return VS("a", T0, One(match, hostEnv1)+"\n  - route: [{destination: {host: "+hostE2+"}}]")
}

// HTTPRows are the HTTP routing decisions: paths with queries, methods,
// rewrite, redirect and direct response.
var HTTPRows = []HTTPRow{
	{"uri prefix", citeHTTPPath, twoWay(`    - uri: {prefix: /api/v1/}`), get("/api/v1/users?page=2"), HTTPAnswer{Status: 200, Env: "env1", Path: "/api/v1/users?page=2"}},
	{"uri prefix, other path", citeHTTPPath, twoWay(`    - uri: {prefix: /api/v1/}`), get("/api/v2/users"), HTTPAnswer{Status: 200, Env: "env2", Path: "/api/v2/users"}},
	{"uri exact ignores the query", citeHTTPPath, twoWay(`    - uri: {exact: /healthz}`), get("/healthz?full=1"), HTTPAnswer{Status: 200, Env: "env1", Path: "/healthz?full=1"}},
	{"uri regex ignores the query", citeHTTPPath, twoWay(`    - uri: {regex: "/items/[0-9]+"}`), get("/items/42?sort=asc"), HTTPAnswer{Status: 200, Env: "env1", Path: "/items/42?sort=asc"}},
	{"uri prefix sees the query", citeHTTPPath, twoWay(`    - uri: {prefix: "/search?q="}`), get("/search?q=x"), HTTPAnswer{Status: 200, Env: "env1", Path: "/search?q=x"}},
	{"method POST", citeMethod, twoWay(`    - method: {exact: POST}`), HTTPRequest{Method: "POST", Path: "/orders", Authority: "gw.example.com"}, HTTPAnswer{Status: 200, Env: "env1", Path: "/orders"}},
	{"method GET", citeMethod, twoWay(`    - method: {exact: POST}`), get("/orders"), HTTPAnswer{Status: 200, Env: "env2", Path: "/orders"}},
	{"env header and path", citeBlocks, twoWay(`    - headers: {env: {exact: env1}}
      uri: {prefix: /api/}`), get("/api/x", "env", "env1"), HTTPAnswer{Status: 200, Env: "env1", Path: "/api/x"}},
	{"rewrite prefix", citeRewrite, VS("a", T0, `  - match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v2/}
    route: [{destination: {host: `+hostEnv1+`}}]`), get("/api/users?x=1"), HTTPAnswer{Status: 200, Env: "env1", Path: "/v2/users?x=1"}},
	{"rewrite exact", citeRewrite, VS("a", T0, `  - match: [{uri: {exact: /old}}]
    rewrite: {uri: /new}
    route: [{destination: {host: `+hostEnv1+`}}]`), get("/old?q=1"), HTTPAnswer{Status: 200, Env: "env1", Path: "/new?q=1"}},
	{"rewrite without a uri match", citeRewrite + "; " + citeNoMatch, VS("a", T0, `  - match: [{headers: {env: {exact: env1}}}]
    rewrite: {uri: /v2/}
    route: [{destination: {host: `+hostEnv1+`}}]`), get("/hello", "env", "env1"), HTTPAnswer{Status: 200, Env: "env1", Path: "/v2/hello"}},
	{"rewrite authority", citeRewrite, VS("a", T0, `  - rewrite: {authority: internal.example.com}
    route: [{destination: {host: `+hostEnv1+`}}]`), get("/x"), HTTPAnswer{Status: 200, Env: "env1", Path: "/x", Host: "internal.example.com"}},
	{"redirect uri keeps the query", citeRedirect, VS("a", T0, `  - match: [{uri: {prefix: /old/}}]
    redirect: {uri: /new}`), get("/old/page?x=1"), HTTPAnswer{Status: 301, Location: "http://gw.example.com/new?x=1"}},
	{"redirect authority, scheme, code", citeRedirect, VS("a", T0, `  - redirect: {authority: www.example.com, scheme: https, redirectCode: 302}`), get("/a"), HTTPAnswer{Status: 302, Location: "https://www.example.com/a"}},
	{"redirect to 443 over https has no port", citeRedirect, VS("a", T0, `  - redirect: {scheme: https, port: 443}`), get("/a"), HTTPAnswer{Status: 301, Location: "https://gw.example.com/a"}},
	{"redirect port", citeRedirect, VS("a", T0, `  - redirect: {port: 8443, redirectCode: 308}`), get("/a"), HTTPAnswer{Status: 308, Location: "http://gw.example.com:8443/a"}},
	{"direct response", citeDirect, VS("a", T0, `  - match: [{uri: {prefix: /maintenance}}]
    directResponse: {status: 503, body: {string: "down for maintenance"}}`), get("/maintenance"), HTTPAnswer{Status: 503, Body: "down for maintenance"}},
	{"direct response without a body", citeDirect, VS("a", T0, `  - directResponse: {status: 204}`), get("/x"), HTTPAnswer{Status: 204}},
	{"no route", citeHTTPNoRoute, VS("a", T0, One(`    - uri: {prefix: /api/}`, hostEnv1)), get("/web"), HTTPAnswer{Status: 404}},
}

// HTTPRefusals are HTTP actions Istio's validation refuses.
var HTTPRefusals = []Refusal{
	{"route and redirect", "istio pkg/config/validation/virtualservice.go validateHTTPRouteConflict", VS("a", T0, "  - route: [{destination: {host: "+hostEnv1+"}}]\n    redirect: {uri: /x}"), "HTTP route cannot contain both route and redirect"},
	{"rewrite and redirect", "istio pkg/config/validation/virtualservice.go validateHTTPRouteConflict", VS("a", T0, "  - redirect: {uri: /x}\n    rewrite: {uri: /y}"), "HTTP route rule cannot contain both rewrite and redirect"},
	{"direct response and route", "istio pkg/config/validation/virtualservice.go validateHTTPRouteConflict", VS("a", T0, "  - route: [{destination: {host: "+hostEnv1+"}}]\n    directResponse: {status: 200}"), "HTTP route cannot contain both route and direct_response"},
	{"direct response status", "istio pkg/config/validation/validation.go validateHTTPDirectResponse, validateHTTPStatus", VS("a", T0, "  - directResponse: {status: 99}"), "HTTP status 99 is not in range 200-599"},
	{"redirect code", "istio pkg/config/validation/validation.go validateHTTPRedirect", VS("a", T0, "  - redirect: {uri: /x, redirectCode: 200}"), "200 is not a valid redirect code, must be 3xx"},
	{"redirect scheme", "istio pkg/config/validation/validation.go validateHTTPRedirect", VS("a", T0, "  - redirect: {scheme: ftp}"), `invalid redirect scheme, must be "http" or "https"`},
	{"empty redirect", "istio pkg/config/validation/validation.go validateHTTPRedirect", VS("a", T0, "  - redirect: {redirectCode: 302}"), "redirect must specify URI, authority, scheme, or port"},
	{"empty rewrite", "istio pkg/config/validation/validation.go validateHTTPRewrite", VS("a", T0, "  - rewrite: {}\n    route: [{destination: {host: "+hostEnv1+"}}]"), "rewrite must specify at least one of URI"},
}
