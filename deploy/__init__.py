"""Kubernetes deployment: generated manifests, schema handling and offline validation (kustomize, kubeconform)."""
