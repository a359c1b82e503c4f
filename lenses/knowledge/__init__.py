"""The knowledge lens: DTUs browsed, written, cited, merged, published and exported as a lens."""
