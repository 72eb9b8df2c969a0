"""Model packages and the engines that run them."""
