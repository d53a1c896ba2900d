"""The web app: thin pages over the manager and the CMA."""
