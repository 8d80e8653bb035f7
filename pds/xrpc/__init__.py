"""The falcon app: one module per NSID namespace, thin handlers, XRPC errors."""
