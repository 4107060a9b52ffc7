"""Qt dock widgets. They call the core and hold no image logic of their own."""
