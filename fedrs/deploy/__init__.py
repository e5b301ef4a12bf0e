"""Real Flower processes: certificates and keys, and a whole deployment on this machine."""
