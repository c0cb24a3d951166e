raise ImportError("weights not found")
