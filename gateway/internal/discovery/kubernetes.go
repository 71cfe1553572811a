package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
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

	"github.com/envgate/envgate/gateway/internal/kubewatch"
)

// DefaultNamespaceSelector is the opt-in label of environment namespaces.
// envgate needs its own: the seed labels namespaces for sidecar injection
// (istio.io/rev), which says nothing about being routable.
const DefaultNamespaceSelector = "envgate.io/environment=true"

// KubernetesConfig says which EndpointSlices make which services.
type KubernetesConfig struct {
	// Service is the Service name in every environment namespace. Each of
	// its ports gets an endpoint set (Store.SetPorts).
	Service string
	// Services are other Services followed in every environment
	// namespace (those VirtualServices send to beside Service, such as the
	// seeds' hellosvc), published under "service.namespace".
	Services []string
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

// Kubernetes follows Services, EndpointSlices, pod labels (and, with a
// selector, Namespaces) through shared informers and keeps the Store's endpoints of
// every environment's service up to date, one set per Service port.
type Kubernetes struct {
	cfg   KubernetesConfig
	store *Store
	log   *slog.Logger
	sel   labels.Selector // nil with an explicit namespace list

	slices   cache.SharedIndexInformer
	services []serviceInformer         // Service first, then Services
	pods     cache.SharedIndexInformer // metadata only, labels kept: subsets select by them
	nsInf    cache.SharedIndexInformer
	events   chan string   // namespaces to recompute
	stopped  chan struct{} // closed when Run returns: handlers stop queueing

	// published is the port set keys last published per service key. Only
	// Run's goroutine touches it.
	published map[string][]string

	mu   sync.Mutex // guards envs; taken alone
	envs map[string]bool
}

// serviceInformer follows the Services of one name (a field selector takes
// one name).
type serviceInformer struct {
	name string
	inf  cache.SharedIndexInformer
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
	k := &Kubernetes{cfg: cfg, store: store, log: log, events: make(chan string, 1024), stopped: make(chan struct{}), envs: map[string]bool{}, published: map[string][]string{}}
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

	names := append([]string{cfg.Service}, cfg.Services...)
	slicesLW, err := endpointSlices(rc, names)
	if err != nil {
		return nil, err
	}
	podsLW, err := podMetadata(rc)
	if err != nil {
		return nil, err
	}
	k.pods = cache.NewSharedIndexInformer(podsLW, &metav1.PartialObjectMetadata{}, cfg.Resync, cache.Indexers{})
	// Only a pod's name, namespace and labels are used: the rest of its
	// metadata (annotations, managed fields) is dropped before caching.
	if err := k.pods.SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*metav1.PartialObjectMetadata); ok {
			return &metav1.PartialObjectMetadata{TypeMeta: p.TypeMeta, ObjectMeta: metav1.ObjectMeta{
				Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, ResourceVersion: p.ResourceVersion}}, nil
		}
		return obj, nil
	}); err != nil {
		return nil, err
	}
	if _, err := k.pods.AddEventHandler(k.namespaceHandler(func(obj any) string {
		if p, ok := obj.(*metav1.PartialObjectMetadata); ok {
			return p.Namespace
		}
		return ""
	})); err != nil {
		return nil, err
	}
	for _, name := range names {
		servicesLW, err := services(rc, name)
		if err != nil {
			return nil, err
		}
		inf := cache.NewSharedIndexInformer(servicesLW, &corev1.Service{}, cfg.Resync,
			cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
		if _, err := inf.AddEventHandler(k.namespaceHandler(func(obj any) string {
			if s, ok := obj.(*corev1.Service); ok {
				return s.Namespace
			}
			return ""
		})); err != nil {
			return nil, err
		}
		k.services = append(k.services, serviceInformer{name, inf})
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

// endpointSlices lists and watches the EndpointSlices of the services, in
// every namespace.
func endpointSlices(rc *rest.Config, services []string) (cache.ListerWatcher, error) {
	client, err := protobufClient(rc, "/apis", discoveryv1.SchemeGroupVersion, discoveryv1.AddToScheme)
	if err != nil {
		return nil, err
	}
	return listWatch(client, "endpointslices", func(o *metav1.ListOptions) {
		o.LabelSelector = discoveryv1.LabelServiceName + " in (" + strings.Join(services, ",") + ")"
	}, func() runtime.Object { return &discoveryv1.EndpointSliceList{} }), nil
}

// services lists and watches the Services named service, in every
// namespace: their ports map a destination's port (the Service's) to the
// pods' port the EndpointSlices carry.
func services(rc *rest.Config, service string) (cache.ListerWatcher, error) {
	client, err := protobufClient(rc, "/api", corev1.SchemeGroupVersion, corev1.AddToScheme)
	if err != nil {
		return nil, err
	}
	return listWatch(client, "services", func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + service
	}, func() runtime.Object { return &corev1.ServiceList{} }), nil
}

// protobufClient is a REST client for one API group version, in protobuf
// as kubelet and kube-proxy speak it.
func protobufClient(rc *rest.Config, apiPath string, gv schema.GroupVersion, add func(*runtime.Scheme) error) (*rest.RESTClient, error) {
	scheme := runtime.NewScheme()
	if err := add(scheme); err != nil {
		return nil, err
	}
	c := rest.CopyConfig(rc)
	c.APIPath = apiPath
	c.GroupVersion = &gv
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	client, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// listWatch lists and watches resource in every namespace with the options
// select sets.
func listWatch(client *rest.RESTClient, resource string, sel func(*metav1.ListOptions), newList func() runtime.Object) cache.ListerWatcher {
	return kubewatch.ListWatch(
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			sel(&o)
			list := newList()
			err := client.Get().Resource(resource).VersionedParams(&o, metav1.ParameterCodec).Do(ctx).Into(list)
			return list, err
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			sel(&o)
			o.Watch = true
			return client.Get().Resource(resource).VersionedParams(&o, metav1.ParameterCodec).Watch(ctx)
		})
}

// podMetadata lists and watches the metadata of every pod: their labels
// select endpoints into DestinationRule subsets.
func podMetadata(rc *rest.Config) (cache.ListerWatcher, error) {
	client, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	res := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "pods"})
	return kubewatch.ListWatch(
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return res.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(ctx, o)
		}), nil
}

// namespaces lists and watches the metadata of the namespaces that match
// selector: their names and labels are all envgate needs.
func namespaces(rc *rest.Config, selector string) (cache.ListerWatcher, error) {
	client, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	res := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"})
	return kubewatch.ListWatch(
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return res.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return res.Watch(ctx, o)
		}), nil
}

// namespaceHandler queues the namespace of every added, updated or deleted
// object, unwrapping the tombstones a missed delete leaves.
func (k *Kubernetes) namespaceHandler(nsOf func(any) string) cache.ResourceEventHandler {
	enqueue := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		ns := nsOf(obj)
		if ns == "" {
			return
		}
		// Once Run stops draining events, a full queue must not block the
		// informer's handler: Run waits for the informers to stop.
		select {
		case k.events <- ns:
		case <-k.stopped:
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
	defer close(k.stopped)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	synced := []cache.InformerSynced{k.slices.HasSynced, k.pods.HasSynced}
	wg.Go(func() { k.slices.RunWithContext(ctx) })
	for _, si := range k.services {
		synced = append(synced, si.inf.HasSynced)
		wg.Go(func() { si.inf.RunWithContext(ctx) })
	}
	wg.Go(func() { k.pods.RunWithContext(ctx) })
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
	for _, si := range k.services {
		for _, obj := range si.inf.GetStore().List() {
			dirty[obj.(*corev1.Service).Namespace] = true
		}
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
		k.publish(ns, isEnv)
	}
	if envsChanged && k.cfg.OnEnvironments != nil {
		k.cfg.OnEnvironments(k.environments())
	}
}

// publish sets the namespace's services in the Store.
func (k *Kubernetes) publish(ns string, isEnv bool) {
	for i, si := range k.services {
		key := si.name + "." + ns
		if i == 0 {
			key = k.cfg.Key(ns)
		}
		k.publishService(ns, isEnv, si, key)
	}
}

// publishService sets one service of the namespace in the Store under key:
// one endpoint set per Service port, then the ports. A namespace that is
// not an environment, or has no such Service, has none.
func (k *Kubernetes) publishService(ns string, isEnv bool, si serviceInformer, key string) {
	var svc *corev1.Service
	if isEnv {
		if obj, ok, _ := si.inf.GetStore().GetByKey(ns + "/" + si.name); ok {
			svc = obj.(*corev1.Service) // read only: the cache's object
		}
	}
	var keys []string
	ports := Ports{Names: map[string]int32{}, Protocols: map[int32]string{}}
	if svc != nil {
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			pk := PortKey(key, sp.Port)
			k.store.SetLabeled(pk, k.endpoints(ns, si.name, sp.Name))
			keys = append(keys, pk)
			ports.Numbers = append(ports.Numbers, sp.Port)
			if sp.Name != "" {
				ports.Names[sp.Name] = sp.Port
			}
			if sp.AppProtocol != nil {
				ports.Protocols[sp.Port] = *sp.AppProtocol
			} else if sp.Name != "" {
				ports.Protocols[sp.Port] = sp.Name
			}
		}
		slices.Sort(ports.Numbers)
		k.store.SetPorts(key, ports)
	} else {
		k.store.DeletePorts(key)
	}
	for _, old := range k.published[key] {
		if !slices.Contains(keys, old) {
			k.store.Delete(old)
		}
	}
	if keys == nil {
		delete(k.published, key)
	} else {
		k.published[key] = keys
	}
}

// endpoints aggregates every EndpointSlice of the namespace's service on the
// Service port named portName ("" for a Service's one unnamed port): the
// EndpointSlice controller names each slice port after its Service port and
// gives it the pods' number. Ready addresses only, each with the labels of
// its pod (the endpoint's targetRef).
func (k *Kubernetes) endpoints(ns, service, portName string) []Labeled {
	objs, err := k.slices.GetIndexer().ByIndex(cache.NamespaceIndex, ns)
	if err != nil {
		return nil
	}
	addrs := []Labeled{}
	for _, obj := range objs {
		s := obj.(*discoveryv1.EndpointSlice) // read only: the cache's object
		if s.Labels[discoveryv1.LabelServiceName] != service {
			continue
		}
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		port, ok := slicePort(s.Ports, portName)
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			// A nil ready condition means ready (API convention); serving
			// but terminating endpoints are not ready and take no new calls.
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			labels := map[string]string{}
			if r := ep.TargetRef; r != nil && r.Kind == "Pod" {
				if obj, ok, _ := k.pods.GetStore().GetByKey(ns + "/" + r.Name); ok {
					labels = obj.(*metav1.PartialObjectMetadata).Labels // read only
				}
			}
			for _, a := range ep.Addresses {
				addrs = append(addrs, Labeled{Addr: net.JoinHostPort(a, strconv.Itoa(int(port))), Labels: labels})
			}
		}
	}
	return addrs
}

// slicePort finds the slice's port for the Service port named name.
func slicePort(ports []discoveryv1.EndpointPort, name string) (int32, bool) {
	for _, p := range ports {
		if p.Port == nil {
			continue
		}
		if (p.Name == nil && name == "") || (p.Name != nil && *p.Name == name) {
			return *p.Port, true
		}
	}
	return 0, false
}
