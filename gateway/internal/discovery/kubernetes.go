package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// DefaultNamespaceSelector is the opt-in label of environment namespaces.
// envgate needs its own: the seed labels namespaces for sidecar injection
// (istio.io/rev), which says nothing about being routable.
const DefaultNamespaceSelector = "envgate.io/environment=true"

// KubernetesConfig says which EndpointSlices make which services.
type KubernetesConfig struct {
	// Service is the Service name in every environment namespace.
	Service string
	// Port is the Service port's name, or its number.
	Port string
	// Namespaces, when set, are the environments; otherwise namespaces
	// matching NamespaceSelector are.
	Namespaces        []string
	NamespaceSelector string
	// Key names a namespace's service in the Store.
	Key func(namespace string) string
	// OnEnvironments is called with the sorted environment namespaces
	// whenever they change, and once when the caches have synced.
	OnEnvironments func([]string)
	// Resync is the informers' resync period (0: none).
	Resync time.Duration
}

// Kubernetes follows EndpointSlices (and, with a selector, Namespaces)
// through shared informers and keeps the Store's endpoints of every
// environment's service up to date.
type Kubernetes struct {
	cfg   KubernetesConfig
	store *Store
	log   *slog.Logger
	sel   labels.Selector // nil with an explicit namespace list

	slices cache.SharedIndexInformer
	nsInf  cache.SharedIndexInformer
	events chan string // namespaces to recompute; "" means all

	mu   sync.Mutex
	envs map[string]bool
}

// NewKubernetes prepares the source on the API server rc points to; Run
// starts it.
//
// It talks to the API server with a REST client that knows EndpointSlices
// only (in protobuf, as kubelet and kube-proxy do) and reads Namespaces as
// metadata, rather than through client-go's typed clientset and informer
// factory: those link every built-in API type into the binary, about 9 MB of
// resident memory a gateway pod would carry for nothing.
func NewKubernetes(rc *rest.Config, store *Store, cfg KubernetesConfig, log *slog.Logger) (*Kubernetes, error) {
	k := &Kubernetes{cfg: cfg, store: store, log: log, events: make(chan string, 1024), envs: map[string]bool{}}
	if len(cfg.Namespaces) == 0 {
		s := cfg.NamespaceSelector
		if s == "" {
			s = DefaultNamespaceSelector
		}
		sel, err := labels.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("namespace selector %q: %w", s, err)
		}
		if sel.Empty() {
			return nil, errors.New("namespace selector is empty: it would make every namespace, kube-system included, an environment")
		}
		k.sel = sel
	}
	for _, ns := range cfg.Namespaces {
		k.envs[ns] = true
	}

	slicesLW, err := endpointSlices(rc, discoveryv1.LabelServiceName+"="+cfg.Service)
	if err != nil {
		return nil, err
	}
	k.slices = cache.NewSharedIndexInformer(slicesLW, &discoveryv1.EndpointSlice{}, cfg.Resync,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if _, err := k.slices.AddEventHandler(k.namespaceHandler(func(obj any) string {
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
			return s.Namespace
		}
		return ""
	})); err != nil {
		return nil, err
	}
	if k.sel != nil {
		nsLW, err := namespaces(rc, k.sel.String())
		if err != nil {
			return nil, err
		}
		k.nsInf = cache.NewSharedIndexInformer(nsLW, &metav1.PartialObjectMetadata{}, cfg.Resync, cache.Indexers{})
		if _, err := k.nsInf.AddEventHandler(k.namespaceHandler(func(obj any) string {
			if n, ok := obj.(*metav1.PartialObjectMetadata); ok {
				return n.Name
			}
			return ""
		})); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// endpointSlices lists and watches the EndpointSlices that match selector,
// in every namespace.
func endpointSlices(rc *rest.Config, selector string) (cache.ListerWatcher, error) {
	scheme := runtime.NewScheme()
	if err := discoveryv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c := rest.CopyConfig(rc)
	c.APIPath = "/apis"
	c.GroupVersion = &discoveryv1.SchemeGroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	client, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			list := &discoveryv1.EndpointSliceList{}
			err := client.Get().Resource("endpointslices").VersionedParams(&o, metav1.ParameterCodec).Do(ctx).Into(list)
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			o.Watch = true
			return client.Get().Resource("endpointslices").VersionedParams(&o, metav1.ParameterCodec).Watch(ctx)
		},
	}, nil
}

// namespaces lists and watches the metadata of the namespaces that match
// selector: their names and labels are all envgate needs.
func namespaces(rc *rest.Config, selector string) (cache.ListerWatcher, error) {
	client, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	res := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"})
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return res.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return res.Watch(ctx, o)
		},
	}, nil
}

// namespaceHandler queues the namespace of every added, updated or deleted
// object, unwrapping the tombstones a missed delete leaves.
func (k *Kubernetes) namespaceHandler(nsOf func(any) string) cache.ResourceEventHandler {
	enqueue := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if ns := nsOf(obj); ns != "" {
			k.events <- ns
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}
}

// Run runs the informers until ctx ends. The Store is marked synced once
// every cache has synced and the first state is published.
func (k *Kubernetes) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	synced := []cache.InformerSynced{k.slices.HasSynced}
	wg.Go(func() { k.slices.RunWithContext(ctx) })
	if k.nsInf != nil {
		synced = append(synced, k.nsInf.HasSynced)
		wg.Go(func() { k.nsInf.RunWithContext(ctx) })
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("kubernetes discovery: caches did not sync: %w", ctx.Err())
	}
	k.recomputeAll()
	k.store.MarkSynced()
	k.log.Info("kubernetes discovery synced", "environments", len(k.environments()))
	for {
		select {
		case <-ctx.Done():
			return nil
		case ns := <-k.events:
			// Coalesce a burst of events into one pass per namespace.
			dirty := map[string]bool{ns: true}
		drain:
			for {
				select {
				case ns := <-k.events:
					dirty[ns] = true
				default:
					break drain
				}
			}
			k.recompute(dirty)
		}
	}
}

func (k *Kubernetes) environments() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	envs := make([]string, 0, len(k.envs))
	for ns := range k.envs {
		envs = append(envs, ns)
	}
	slices.Sort(envs)
	return envs
}

// recomputeAll publishes every environment's endpoints and the environments.
func (k *Kubernetes) recomputeAll() {
	dirty := map[string]bool{}
	for _, ns := range k.cfg.Namespaces {
		dirty[ns] = true
	}
	if k.nsInf != nil {
		for _, obj := range k.nsInf.GetStore().List() {
			dirty[obj.(*metav1.PartialObjectMetadata).Name] = true
		}
	}
	for _, obj := range k.slices.GetStore().List() {
		dirty[obj.(*discoveryv1.EndpointSlice).Namespace] = true
	}
	k.recompute(dirty)
	if k.cfg.OnEnvironments != nil {
		k.cfg.OnEnvironments(k.environments())
	}
}

func (k *Kubernetes) recompute(dirty map[string]bool) {
	envsChanged := false
	for ns := range dirty {
		if k.nsInf != nil {
			_, exists, _ := k.nsInf.GetStore().GetByKey(ns)
			k.mu.Lock()
			if exists != k.envs[ns] {
				envsChanged = true
				if exists {
					k.envs[ns] = true
				} else {
					delete(k.envs, ns)
				}
			}
			k.mu.Unlock()
		}
		k.mu.Lock()
		isEnv := k.envs[ns]
		k.mu.Unlock()
		key := k.cfg.Key(ns)
		if !isEnv {
			k.store.Delete(key)
			continue
		}
		eps, found := k.endpoints(ns)
		if !found {
			k.store.Delete(key)
			continue
		}
		k.store.Set(key, eps)
	}
	if envsChanged && k.cfg.OnEnvironments != nil {
		k.cfg.OnEnvironments(k.environments())
	}
}

// endpoints aggregates every EndpointSlice of the namespace's service: ready
// addresses only, on the configured port, without duplicates. found is false
// when the service has no slice at all.
func (k *Kubernetes) endpoints(ns string) (addrs []string, found bool) {
	objs, err := k.slices.GetIndexer().ByIndex(cache.NamespaceIndex, ns)
	if err != nil {
		return nil, false
	}
	for _, obj := range objs {
		s := obj.(*discoveryv1.EndpointSlice) // read only: the cache's object
		if s.Labels[discoveryv1.LabelServiceName] != k.cfg.Service {
			continue
		}
		found = true
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		port, ok := k.port(s.Ports)
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			// A nil ready condition means ready (API convention); serving
			// but terminating endpoints are not ready and take no new calls.
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				addrs = append(addrs, net.JoinHostPort(a, strconv.Itoa(int(port))))
			}
		}
	}
	return addrs, found
}

// port finds the configured port, by name or by number.
func (k *Kubernetes) port(ports []discoveryv1.EndpointPort) (int32, bool) {
	n, err := strconv.Atoi(k.cfg.Port)
	for _, p := range ports {
		if p.Port == nil {
			continue
		}
		if (err == nil && int(*p.Port) == n) || (p.Name != nil && *p.Name == k.cfg.Port) {
			return *p.Port, true
		}
	}
	return 0, false
}
