"""Quality control: surface renders of heads and a face re-identification audit."""
