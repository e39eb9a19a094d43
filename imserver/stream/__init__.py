"""XML stream handling: the restricted parser every byte from a peer goes through."""
