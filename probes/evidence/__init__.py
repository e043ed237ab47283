"""Evidence readers: access-log lines and spans, normalised into per-hop records.

``accesslog`` compiles Envoy formats and parses lines; ``spans`` parses Jaeger and Tempo
trace documents; ``kube`` reads istio-proxy logs, the mesh config and VirtualServices
through the Kubernetes API; ``traceapi`` reads traces back with a bounded wait;
``request`` groups one probe request's evidence by hop; ``collect`` does all of it for
a batch of requests.
"""
