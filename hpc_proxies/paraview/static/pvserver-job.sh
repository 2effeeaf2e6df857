#!/bin/bash
# pvserver on ${ranks} MPI ranks for the ParaView tile of hpc-proxies (job ${job_name}).
#
# A site's own template ([apps.paraview] job_script) may load modules or set variables
# before ${pvserver}, which it must keep: it runs pvserver's ranks and starts pvserver
# again whenever a client leaves, until the job ends. sbatch's options (ranks,
# partition, account, time, extra_args) come from the site configuration, not from
# #SBATCH lines here. Nothing secret is in this script: Slurm keeps a copy.
${pvserver}
