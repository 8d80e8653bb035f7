"""Services: accounts, auth, identity, repo writes, blobs, firehose, lifecycle."""
