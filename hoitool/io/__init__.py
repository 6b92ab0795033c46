"""Small file helpers shared by every stage."""
