package httpproxy

import (
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/envgate/envgate/gateway/internal/route"
)

// matchedPrefix is the part of path that the rule's matching block matched,
// which rewrite.uri replaces, as Envoy's prefix_rewrite does and Istio
// configures it (pilot/pkg/networking/core/route/route.go: rewrite.uri
// becomes prefix_rewrite; a match without uri is a "/" prefix match):
// for a prefix match the prefix; for an exact or regex match the whole
// path without its query (source/common/router/config_impl.cc
// currentUrlPathAfterRewriteWithMatchedPath).
func matchedPrefix(rule *route.Rule, req *route.Request) string {
	i := rule.Match(req)
	if i < 0 || len(rule.Matches) == 0 || rule.Matches[i].URI == nil {
		return "/"
	}
	u := rule.Matches[i].URI
	if u.Kind == route.Prefix {
		return u.Value
	}
	path := req.Path
	if j := strings.IndexAny(path, "?#"); j >= 0 {
		path = path[:j]
	}
	return path
}

// rewritePath replaces the matched prefix of path with uri.
func rewritePath(path, prefix, uri string) string {
	if !strings.HasPrefix(path, prefix) {
		return path
	}
	return uri + path[len(prefix):]
}

// redirect answers with Istio's HTTPRedirect as Envoy's redirect action
// does (pilot/pkg/networking/core/route/route.go ApplyRedirect; Envoy's
// RouteEntryImplBase::newUri): the request's URL with the path replaced
// whole by uri (the query kept unless uri has one), the authority, scheme
// and port replaced when set (no :80 for http, no :443 for https), status
// 301 unless another is given.
func redirect(w http.ResponseWriter, r *http.Request, rd *route.Redirect) {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if rd.Scheme != "" {
		scheme = rd.Scheme
	}
	host := r.Host
	if rd.Authority != "" {
		host = rd.Authority
	}
	port := ""
	switch {
	case rd.Port != 0:
		port = strconv.Itoa(int(rd.Port))
	case rd.PortFromRequest:
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			_, port, _ = net.SplitHostPort(a.String())
		}
	}
	if port != "" || rd.DefaultPort {
		h := host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			h = hh
		}
		host = h
		if port != "" && !(port == "80" && scheme == "http") && !(port == "443" && scheme == "https") {
			host = net.JoinHostPort(h, port)
		}
	}
	path, query := requestPath(r), ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, query = path[:i], path[i:]
	}
	if rd.URI != "" {
		path = rd.URI
		if strings.Contains(rd.URI, "?") {
			query = ""
		}
	}
	code := rd.Code
	if code == 0 {
		code = http.StatusMovedPermanently
	}
	w.Header().Set("Location", scheme+"://"+host+path+query)
	w.WriteHeader(code)
}
