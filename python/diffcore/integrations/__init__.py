"""Drop-in integrations with other sampling libraries (diffusers schedulers) and their peer loaders."""
