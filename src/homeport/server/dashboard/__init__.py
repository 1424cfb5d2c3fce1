"""The web dashboard: apps, functions, containers, images, storage and usage of one
workspace, behind a short-lived sign-in link from `modal dashboard`."""
