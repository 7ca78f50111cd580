set -e
pvcreate /dev/sda
vgcreate pikube /dev/sda
lvcreate --yes --type thin-pool --size 400G --metadataprofile pikube-thinpool --name pool pikube
lvcreate --yes --type thin --virtualsize 400G --thinpool pool --name data pikube
mkfs.xfs -q -L pikube-data /dev/pikube/data </dev/null
