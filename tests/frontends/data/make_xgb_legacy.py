"""Writes xgb_1.7.6_binary.model and xgb_1.7.6_binary.npz. Run with XGBoost 1.7.6 (the last 1.x
release; XGBoost 3 cannot write or read this format): pip install xgboost==1.7.6 "numpy<2"."""
import numpy as np
import xgboost as xgb

assert xgb.__version__ == "1.7.6", xgb.__version__
rng = np.random.default_rng(3)
x = rng.standard_normal((400, 6)).astype(np.float32)
label = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int) + (x[:, 3] > 0.7)
bst = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 4}, xgb.DMatrix(x, label=label), 8)
bst.save_model("xgb_1.7.6_binary.model")  # not .json/.ubj: XGBoost 1.x writes its old binary format
test = rng.standard_normal((40, 6)).astype(np.float32)
test[::4, 2] = np.nan
np.savez("xgb_1.7.6_binary.npz", x=test, predictions=bst.predict(xgb.DMatrix(test)))
