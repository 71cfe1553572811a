// Package destinationrule reads Istio DestinationRule objects (files or the
// cluster's) and answers, for a destination host, subset and port, the
// traffic policy Istio would apply to it: TLS, load balancing, outlier
// detection, connection pool limits, and the pod labels of a subset.
package destinationrule

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/envgate/envgate/gateway/internal/istioyaml"
)

// Object is one DestinationRule.
type Object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name              string    `json:"name"`
		Namespace         string    `json:"namespace"`
		CreationTimestamp time.Time `json:"creationTimestamp"`
	} `json:"metadata"`
	Spec Spec `json:"spec"`
	raw  map[string]any
}

// Spec is the implemented part of the DestinationRule spec.
type Spec struct {
	Host          string         `json:"host"`
	TrafficPolicy *TrafficPolicy `json:"trafficPolicy"`
	Subsets       []Subset       `json:"subsets"`
	ExportTo      []string       `json:"exportTo"`
}

// TrafficPolicy is Istio's TrafficPolicy.
type TrafficPolicy struct {
	LoadBalancer      *LoadBalancer       `json:"loadBalancer"`
	ConnectionPool    *ConnectionPool     `json:"connectionPool"`
	OutlierDetection  *OutlierDetection   `json:"outlierDetection"`
	TLS               *ClientTLS          `json:"tls"`
	PortLevelSettings []PortTrafficPolicy `json:"portLevelSettings"`
}

// PortTrafficPolicy is a policy for one port of the destination.
type PortTrafficPolicy struct {
	Port *struct {
		Number uint32 `json:"number"`
	} `json:"port"`
	LoadBalancer     *LoadBalancer     `json:"loadBalancer"`
	ConnectionPool   *ConnectionPool   `json:"connectionPool"`
	OutlierDetection *OutlierDetection `json:"outlierDetection"`
	TLS              *ClientTLS        `json:"tls"`
}

// LoadBalancer is LoadBalancerSettings.simple.
type LoadBalancer struct {
	Simple string `json:"simple"`
}

// ConnectionPool is ConnectionPoolSettings, its http part: the limits that
// apply to HTTP/2 upstreams.
type ConnectionPool struct {
	HTTP *HTTPPool `json:"http"`
}

// HTTPPool is ConnectionPoolSettings.HTTPSettings, as far as implemented.
type HTTPPool struct {
	HTTP2MaxRequests         int32 `json:"http2MaxRequests"`
	MaxRequestsPerConnection int32 `json:"maxRequestsPerConnection"`
	MaxRetries               int32 `json:"maxRetries"`
}

// OutlierDetection is Istio's OutlierDetection.
type OutlierDetection struct {
	Consecutive5xxErrors     *uint32 `json:"consecutive5xxErrors"`
	ConsecutiveGatewayErrors *uint32 `json:"consecutiveGatewayErrors"`
	Interval                 string  `json:"interval"`
	BaseEjectionTime         string  `json:"baseEjectionTime"`
	MaxEjectionPercent       *int32  `json:"maxEjectionPercent"`
}

// ClientTLS is ClientTLSSettings.
type ClientTLS struct {
	Mode              string   `json:"mode"`
	ClientCertificate string   `json:"clientCertificate"`
	PrivateKey        string   `json:"privateKey"`
	CACertificates    string   `json:"caCertificates"`
	SNI               string   `json:"sni"`
	SubjectAltNames   []string `json:"subjectAltNames"`
}

// Subset is a named version of the destination, by pod labels.
type Subset struct {
	Name          string            `json:"name"`
	Labels        map[string]string `json:"labels"`
	TrafficPolicy *TrafficPolicy    `json:"trafficPolicy"`
}

// Name is namespace/name.
func (o *Object) Name() string { return o.Metadata.Namespace + "/" + o.Metadata.Name }

// Parse decodes every DestinationRule of a multi-document YAML or JSON
// stream; other kinds are skipped. Objects without a namespace get def.
func Parse(r io.Reader, def string) ([]*Object, error) {
	return istioyaml.Objects(r, "DestinationRule", def, FromMap)
}

// FromMap reads an object already decoded (a file document, or a watched
// unstructured object), which it does not modify.
func FromMap(raw map[string]any) (*Object, error) {
	o := &Object{raw: raw}
	if err := istioyaml.Into(raw, o); err != nil {
		return nil, fmt.Errorf("destinationrule: %w", err)
	}
	return o, nil
}

// The fields envgate implements, per level; any other is reported.
var (
	knownSpec    = []string{"host", "trafficPolicy", "subsets", "exportTo"}
	knownPolicy  = []string{"loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings"}
	knownPort    = []string{"port", "loadBalancer", "connectionPool", "outlierDetection", "tls"}
	knownPool    = []string{"http"}
	knownHTTP    = []string{"http2MaxRequests", "maxRequestsPerConnection", "maxRetries"}
	knownLB      = []string{"simple"}
	knownOutlier = []string{"consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime", "maxEjectionPercent"}
	knownTLS     = []string{"mode", "clientCertificate", "privateKey", "caCertificates", "sni", "subjectAltNames"}
	knownSubset  = []string{"name", "labels", "trafficPolicy"}
)

// Issue is a field envgate does not implement. Every such field changes how
// traffic is sent, so it refuses its object.
type Issue struct {
	Object, Field string
}

func (o *Object) unimplemented() []Issue {
	var out []Issue
	report := func(path string, m map[string]any, known []string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !slices.Contains(known, k) {
				out = append(out, Issue{Object: o.Name(), Field: path + "." + k})
			}
		}
	}
	var policy func(path string, p map[string]any, known []string)
	policy = func(path string, p map[string]any, known []string) {
		report(path, p, known)
		if lb, ok := p["loadBalancer"].(map[string]any); ok {
			report(path+".loadBalancer", lb, knownLB)
		}
		if cp, ok := p["connectionPool"].(map[string]any); ok {
			report(path+".connectionPool", cp, knownPool)
			if h, ok := cp["http"].(map[string]any); ok {
				report(path+".connectionPool.http", h, knownHTTP)
			}
		}
		if od, ok := p["outlierDetection"].(map[string]any); ok {
			report(path+".outlierDetection", od, knownOutlier)
		}
		if t, ok := p["tls"].(map[string]any); ok {
			report(path+".tls", t, knownTLS)
		}
		ports, _ := p["portLevelSettings"].([]any)
		for i, pp := range ports {
			if m, ok := pp.(map[string]any); ok {
				policy(fmt.Sprintf("%s.portLevelSettings[%d]", path, i), m, knownPort)
			}
		}
	}
	spec, _ := o.raw["spec"].(map[string]any)
	report("spec", spec, knownSpec)
	if tp, ok := spec["trafficPolicy"].(map[string]any); ok {
		policy("spec.trafficPolicy", tp, knownPolicy)
	}
	subsets, _ := spec["subsets"].([]any)
	for i, s := range subsets {
		sm, _ := s.(map[string]any)
		report(fmt.Sprintf("spec.subsets[%d]", i), sm, knownSubset)
		if tp, ok := sm["trafficPolicy"].(map[string]any); ok {
			policy(fmt.Sprintf("spec.subsets[%d].trafficPolicy", i), tp, knownPolicy)
		}
	}
	return out
}

// resolveHost is Istio's ResolveShortnameToFQDN (pilot/pkg/model/config.go):
// a host without dots is a service of the object's namespace.
func resolveHost(host, ns string) string {
	if host == "*" || strings.Contains(host, ".") {
		return host
	}
	return host + "." + ns + ".svc.cluster.local"
}
