"""The model server behind `kustos serve`."""
