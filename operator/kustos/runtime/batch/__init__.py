"""`kustos batch`: predict a whole file in chunks, one shard of an indexed Job per pod."""
