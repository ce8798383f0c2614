"""keti-ray on Kubernetes: cluster state from the API server, and booking at bind.

- `objects`: Node and Pod JSON -> the allocator's terms (GPUs per node, requests per container);
- `watch`: list-then-watch with resourceVersions, 410 relists, bookmarks and backoff;
- `sync`: nodes and pods into the allocation service (replace_nodes, release, reconcile);
- `bind`: the extender's bindVerb (book, annotate, bind; release on failure);
- `runtime`: the API client from the environment and the pieces wired to a service.
"""
