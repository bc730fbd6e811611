"""The twistd entry points of the three roles: Options and makeService each."""
