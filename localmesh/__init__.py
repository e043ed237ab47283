"""The embedded local mesh: a Kubernetes API subset, pods as processes, Envoy-like sidecars."""
