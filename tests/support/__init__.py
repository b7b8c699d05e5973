"""What the tests share: keys, services, the sample servers, request bodies, records, load."""
