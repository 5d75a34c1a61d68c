# twistd -ny meshd.tac: the same server as `twistd -n meshd`, for setups that prefer a .tac.
# Options come from the environment: MESHD_CONFIG (a JSON file) and MESHD_DATAPATH.
import os

from twisted.application.service import Application

from meshd.tap import Options, makeService

options = Options()
args = []
if os.environ.get("MESHD_CONFIG"):
    args += ["--config", os.environ["MESHD_CONFIG"]]
if os.environ.get("MESHD_DATAPATH"):
    args += ["--datapath", os.environ["MESHD_DATAPATH"]]
options.parseOptions(args)

application = Application("meshd")
makeService(options).setServiceParent(application)
