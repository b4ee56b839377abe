"""The lmaas Kubernetes operator (kopf): custom resources → Deployments, Services, …"""
