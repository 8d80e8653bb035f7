"""Services: accounts (sign-up, invites), account (status rules), sessions, auth, identity,
records (repo writes and reads), blobs, sync reads, preferences, admin, lifecycle,
firehose, pagination."""
