-- Where an instance's pid names its process: the kernel's boot and the pid namespace
-- (`BOOT_ID pid:[INODE]`). A starting daemon ends the leases of earlier runs it can tell are
-- gone, and only a process in the same pid namespace of the same boot can tell that by the
-- pid; the host name is no proof (containers on one host may share one). NULL: registered by
-- a batchwatch that did not record it, whose lease runs out by itself.
ALTER TABLE instances ADD COLUMN pid_namespace TEXT COLLATE "C";
