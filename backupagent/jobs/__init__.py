"""Jobs: the only places that know the order of a backup's (or a verification's) steps."""
