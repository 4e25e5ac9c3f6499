"""Ray Serve: the model deployment, the HTTP ingress and the app builder."""
