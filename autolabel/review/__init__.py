"""Human review: the queue (leases, reviews, agreement, adjudication, gold) and the web app over it."""
