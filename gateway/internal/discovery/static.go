package discovery

// Static loads a fixed map of service key to endpoints into the store and
// marks it synced. It is the source for running without a cluster.
func Static(store *Store, services map[string][]string) {
	for svc, addrs := range services {
		store.Set(svc, addrs)
	}
	store.MarkSynced()
}
