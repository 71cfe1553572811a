package virtualservice

import (
	"errors"
	"fmt"

	"github.com/envgate/envgate/gateway/internal/route"
)

// checkConflicts refuses what Istio's validation refuses in one HTTP
// route's actions (pkg/config/validation/virtualservice.go
// validateHTTPRouteConflict): a redirect or a direct response next to
// destinations, a rewrite, or each other; and a route with none of the
// three.
func (h *HTTPRoute) checkConflicts() error {
	var errs []error
	switch {
	case h.Redirect != nil:
		if len(h.Route) > 0 {
			errs = append(errs, errors.New("HTTP route cannot contain both route and redirect"))
		}
		if h.Rewrite != nil {
			errs = append(errs, errors.New("HTTP route rule cannot contain both rewrite and redirect"))
		}
		if h.DirectResponse != nil {
			errs = append(errs, errors.New("HTTP route rule cannot contain both direct_response and redirect"))
		}
	case h.DirectResponse != nil:
		if len(h.Route) > 0 {
			errs = append(errs, errors.New("HTTP route cannot contain both route and direct_response"))
		}
		if h.Rewrite != nil {
			errs = append(errs, errors.New("HTTP route rule cannot contain both rewrite and direct_response"))
		}
	case len(h.Route) == 0:
		errs = append(errs, errors.New("HTTP route, redirect or direct_response is required"))
	}
	return errors.Join(errs...)
}

// maxDirectBody is Istio's limit on a direct response's body
// (validateHTTPDirectResponse: "must be less than 1MB").
const maxDirectBody = 1 << 20

// localAction turns the route's rewrite, redirect and direct response into
// the route package's, validated as Istio's validation.go does
// (validateHTTPRewrite, validateHTTPRedirect, validateHTTPDirectResponse)
// and with the redirect codes Istio's route.go ApplyRedirect gives Envoy.
func (h *HTTPRoute) localAction() (route.Action, error) {
	var a route.Action
	if rw := h.Rewrite; rw != nil {
		if rw.URI == "" && rw.Authority == "" {
			return a, errors.New("rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified")
		}
		a.Rewrite = &route.Rewrite{URI: rw.URI, Authority: rw.Authority}
	}
	if rd := h.Redirect; rd != nil {
		if rd.URI == "" && rd.Authority == "" && rd.Port == 0 && rd.DerivePort == "" && rd.Scheme == "" {
			return a, errors.New("redirect must specify URI, authority, scheme, or port")
		}
		if rd.RedirectCode != 0 && (rd.RedirectCode < 300 || rd.RedirectCode > 399) {
			return a, fmt.Errorf("%d is not a valid redirect code, must be 3xx", rd.RedirectCode)
		}
		switch rd.RedirectCode {
		case 0, 301, 302, 303, 307, 308:
		default:
			// Istio accepts it, then gives Envoy a route with no action
			// ("Redirect Code %d is not yet supported").
			return a, fmt.Errorf("redirect code %d: Istio's route.go ApplyRedirect supports 301, 302, 303, 307 and 308 only", rd.RedirectCode)
		}
		if rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https" {
			return a, errors.New(`invalid redirect scheme, must be "http" or "https"`)
		}
		if rd.Port > 65535 {
			return a, fmt.Errorf("port number %d must be in the range 1..65535", rd.Port)
		}
		if rd.Port != 0 && rd.DerivePort != "" {
			return a, errors.New("redirect may only specify one of port or derivePort")
		}
		switch rd.DerivePort {
		case "", "FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT":
		default:
			return a, fmt.Errorf("redirect derivePort %q: want FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT", rd.DerivePort)
		}
		a.Redirect = &route.Redirect{URI: rd.URI, Authority: rd.Authority, Scheme: rd.Scheme, Port: rd.Port,
			PortFromRequest: rd.DerivePort == "FROM_REQUEST_PORT", DefaultPort: rd.DerivePort == "FROM_PROTOCOL_DEFAULT", Code: int(rd.RedirectCode)}
	}
	if d := h.DirectResponse; d != nil {
		// validateHTTPStatus.
		if d.Status < 200 || d.Status > 599 {
			return a, fmt.Errorf("HTTP status %d is not in range 200-599", d.Status)
		}
		dr := &route.DirectResponse{Status: int(d.Status)}
		if d.Body != nil {
			switch {
			case d.Body.String != nil:
				dr.Body = *d.Body.String
			default:
				dr.Body = string(d.Body.Bytes)
			}
		}
		if len(dr.Body) > maxDirectBody {
			return a, errors.New("large direct_responses may impact control plane performance, must be less than 1MB")
		}
		a.DirectResponse = dr
	}
	return a, nil
}
