"""Other serving engines measured beside the built-in one (`tandem bench cloud --peer`)."""
