package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// ACMEConfig configures certificates from an ACME CA (Let's Encrypt, or
// Pebble in tests) for a gateway exposed directly.
type ACMEConfig struct {
	// Hosts is the allow-list: certificates are asked for these names only.
	Hosts []string
	Email string
	// DirectoryURL of the CA (empty: Let's Encrypt production).
	DirectoryURL string
	// RootCAs, when set, are the roots trusted for the CA's own HTTPS API.
	RootCAs *x509.CertPool
	// Cache keeps the account key and certificates across restarts and
	// replicas.
	Cache autocert.Cache
}

// NewACME returns an autocert manager: it answers TLS-ALPN-01 challenges on
// the TLS listener itself, so no extra port is needed.
func NewACME(c ACMEConfig) (*autocert.Manager, error) {
	if len(c.Hosts) == 0 {
		return nil, errors.New("certs: acme needs at least one host")
	}
	if c.Cache == nil {
		return nil, errors.New("certs: acme needs a cache")
	}
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		HostPolicy: autocert.HostWhitelist(c.Hosts...),
		Cache:      c.Cache,
		Email:      c.Email,
	}
	if c.DirectoryURL != "" || c.RootCAs != nil {
		client := &acme.Client{DirectoryURL: c.DirectoryURL}
		if c.RootCAs != nil {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.TLSClientConfig = &tls.Config{RootCAs: c.RootCAs, MinVersion: tls.VersionTLS12}
			client.HTTPClient = &http.Client{Transport: tr}
		}
		m.Client = client
	}
	return m, nil
}

// LoadRoots reads a PEM bundle of CA certificates.
func LoadRoots(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("certs: no certificate in %s", file)
	}
	return pool, nil
}

// SecretCache is an autocert.Cache in one Kubernetes Secret, so that every
// replica of the gateway shares one account and one certificate per host
// instead of each asking the CA. Cache keys become Secret data keys in
// base64url, since autocert's keys hold characters ("+") Secrets refuse.
type SecretCache struct {
	Secrets Secrets
	Name    string
}

// SecretsResource is what a dynamic client's Resource takes for Secrets.
var SecretsResource = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

// Secrets is the part of a dynamic client for the Secrets of one namespace
// the cache uses (dynamic.ResourceInterface). It is not client-go's typed
// Secret client, which would link every built-in API type into the gateway.
type Secrets interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions, subresources ...string) (*unstructured.Unstructured, error)
	Create(ctx context.Context, obj *unstructured.Unstructured, opts metav1.CreateOptions, subresources ...string) (*unstructured.Unstructured, error)
	Update(ctx context.Context, obj *unstructured.Unstructured, opts metav1.UpdateOptions, subresources ...string) (*unstructured.Unstructured, error)
}

var _ autocert.Cache = (*SecretCache)(nil)

func secretKey(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

// Get returns autocert.ErrCacheMiss when the Secret or the key is missing.
func (s *SecretCache) Get(ctx context.Context, key string) ([]byte, error) {
	sec, err := s.Secrets.Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, autocert.ErrCacheMiss
	}
	if err != nil {
		return nil, fmt.Errorf("certs: secret %s: %w", s.Name, err)
	}
	data, err := secretData(sec)
	if err != nil {
		return nil, fmt.Errorf("certs: secret %s: %w", s.Name, err)
	}
	b, ok := data[secretKey(key)]
	if !ok {
		return nil, autocert.ErrCacheMiss
	}
	return b, nil
}

// Put stores data under key, creating the Secret if needed and retrying
// when another replica wrote it meanwhile.
func (s *SecretCache) Put(ctx context.Context, key string, data []byte) error {
	return s.update(ctx, func(d map[string][]byte) { d[secretKey(key)] = data })
}

// Delete removes key.
func (s *SecretCache) Delete(ctx context.Context, key string) error {
	return s.update(ctx, func(d map[string][]byte) { delete(d, secretKey(key)) })
}

func (s *SecretCache) update(ctx context.Context, change func(map[string][]byte)) error {
	for attempt := 0; attempt < 5; attempt++ {
		sec, err := s.Secrets.Get(ctx, s.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			data := map[string][]byte{}
			change(data)
			sec = &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
				"metadata": map[string]any{"name": s.Name},
			}}
			setSecretData(sec, data)
			_, err = s.Secrets.Create(ctx, sec, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			return wrapSecretErr(s.Name, err)
		}
		if err != nil {
			return wrapSecretErr(s.Name, err)
		}
		data, err := secretData(sec)
		if err != nil {
			return wrapSecretErr(s.Name, err)
		}
		change(data)
		sec = sec.DeepCopy() // never change what a client may share
		setSecretData(sec, data)
		_, err = s.Secrets.Update(ctx, sec, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		return wrapSecretErr(s.Name, err)
	}
	return fmt.Errorf("certs: secret %s: too many conflicting writers", s.Name)
}

// secretData decodes a Secret's data, which the API carries in base64.
func secretData(sec *unstructured.Unstructured) (map[string][]byte, error) {
	raw, _, err := unstructured.NestedStringMap(sec.Object, "data")
	if err != nil {
		return nil, err
	}
	data := make(map[string][]byte, len(raw))
	for k, v := range raw {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("data[%s]: %w", k, err)
		}
		data[k] = b
	}
	return data, nil
}

func setSecretData(sec *unstructured.Unstructured, data map[string][]byte) {
	raw := make(map[string]any, len(data))
	for k, v := range data {
		raw[k] = base64.StdEncoding.EncodeToString(v)
	}
	sec.Object["data"] = raw
}

func wrapSecretErr(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("certs: secret %s: %w", name, err)
}
