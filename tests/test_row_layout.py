"""The coefficient row and stage record (csrc/core/row_layout.h) are declared once: the offsets the
binding exports, the Python view over them (diffcore._row) and the kernels agree, and the plans and
the fused step give bit for bit the results recorded before the layout was declared in one place.

The pinned values are the first 16 hex digits of SHA-256 over the bytes of each plan's float64
coefficient table, its stage layout, model times, stage counts and start-noise prelude, and of the
final state of a short run with a fixed analytic model (fused kernel in float32 and float64, the
eager-torch reference step in float64, the Brownian noise source where the plan draws noise)."""
import hashlib

import pytest
import torch

from diffcore import _row, schedules, solvers
from diffcore.noise import Noise
from diffcore.solvers.base import Solver


# recorded before the row layout was declared in one place (see the module docstring)
PINS = {
    'annealed_langevin': {"coefs": "a42db228d7d1dea1", "draws": 800, "layout": "6f41e6d79dcddf39", "mtime": "65539d611d3cf8b1", "nst": "b3db9272f4f15d28", "pre": None, "ref_float64": "e69b920bc7498b48", "run_brownian": "695b5a6eeb69bdff", "run_float32": "695b5a6eeb69bdff", "run_float64": "e69b920bc7498b48"},
    'annealed_langevin/edm': {"coefs": "9de7e6c4d0b54cb5", "draws": 700, "layout": "ee0956cff3c0d596", "mtime": "d06a8b022ec1e9d9", "nst": "c9ebc37c7742be9b", "pre": None, "ref_float64": "35cfbf28269bb1db", "run_brownian": "46a01191a6ea6051", "run_float32": "46a01191a6ea6051", "run_float64": "35cfbf28269bb1db"},
    'ddim': {"coefs": "5e1fa5cec857bdf2", "draws": 0, "layout": "6e47ecbf639e1b95", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "67f16fbb6a301057", "run_float32": "2ead8d19b752c364", "run_float64": "67f16fbb6a301057"},
    'ddim/edm': {"coefs": "30f0e76783a0a1b4", "draws": 0, "layout": "a95620d594227f01", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "05b1a0d773800a1f", "run_float32": "d7ed7338cc7225a4", "run_float64": "05b1a0d773800a1f"},
    'ddim/rf': {"coefs": "562da4e91f36bf5a", "draws": 0, "layout": "c06a95133052ce5c", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "da3667a83d37c181", "run_float32": "3688ba40eaad803c", "run_float64": "da3667a83d37c181"},
    'ddim_eta': {"coefs": "acb6961e558158d1", "draws": 7, "layout": "40543188bd471217", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "27ed5690dd55a726", "run_brownian": "940f0f9794a87dff", "run_float32": "6ef4167702b73cc9", "run_float64": "27ed5690dd55a726"},
    'ddim_eta/edm': {"coefs": "5f4d316f7a5cf858", "draws": 6, "layout": "16f678a24d2c4278", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "65070b558233276b", "run_brownian": "7276e269067a271d", "run_float32": "eb87d986ab789d44", "run_float64": "65070b558233276b"},
    'ddim_eta/rf': {"coefs": "38ac4b918389342c", "draws": 5, "layout": "50d7bf7872da9f6c", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "5ce02c27c02053d7", "run_brownian": "f177586a9b78b181", "run_float32": "d01c0fd00d352a9f", "run_float64": "5ce02c27c02053d7"},
    'ddpm': {"coefs": "148021659c607ac0", "draws": 6, "layout": "ca194650d4f41b3f", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "4c753b67e7cca907", "run_brownian": "00059a6c293d9dcb", "run_float32": "2e92cece038e426d", "run_float64": "4c753b67e7cca907"},
    'ddpm/beta': {"coefs": "881eb1341333bd26", "draws": 4, "layout": "39349642081a7b67", "mtime": "5d6d150734340019", "nst": "15d67f715f212612", "pre": None, "ref_float64": "a96549e600e9f75f", "run_brownian": "9ba959847a2341e1", "run_float32": "0bcfe930231c5002", "run_float64": "a96549e600e9f75f"},
    'ddpm/edm': {"coefs": "05be10b59d7d686a", "draws": 5, "layout": "9ecf444309d28ec2", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "bfaea020932ad900", "run_brownian": "b0b175cbf92bd840", "run_float32": "8fa5d0c53cdbc990", "run_float64": "bfaea020932ad900"},
    'ddpm/rf': {"coefs": "8a0539fa1dc72f05", "draws": 4, "layout": "39349642081a7b67", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "c5e5f1b17d5b50e6", "run_brownian": "f177586a9b78b181", "run_float32": "d01c0fd00d352a9f", "run_float64": "c5e5f1b17d5b50e6"},
    'deis_1': {"coefs": "f6144e4d6ca13d7d", "draws": 0, "layout": "6e47ecbf639e1b95", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "8905be0997f2b7c1", "run_float32": "1de81b3333d40ac2", "run_float64": "8905be0997f2b7c1"},
    'deis_1/edm': {"coefs": "a904dd6bbe368be2", "draws": 0, "layout": "a95620d594227f01", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "e4addc2f538c6214", "run_float32": "853b7d4e5a4afd9d", "run_float64": "e4addc2f538c6214"},
    'deis_2': {"coefs": "37fb4f9fec7a7be4", "draws": 0, "layout": "172e811052431107", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "1d5c4c306fad52b8", "run_float32": "56f0deddaec30a9f", "run_float64": "1d5c4c306fad52b8"},
    'deis_2/edm': {"coefs": "e55144634bfb2550", "draws": 0, "layout": "0173651e6bd13dcd", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "bf1ac66f39545119", "run_float32": "a884fc31b4e8695f", "run_float64": "bf1ac66f39545119"},
    'deis_3': {"coefs": "c90735e973b51e7a", "draws": 0, "layout": "341da585b58fbc04", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "c8a83a44fc7d526b", "run_float32": "03bdb92d9c5c10ba", "run_float64": "c8a83a44fc7d526b"},
    'deis_3/edm': {"coefs": "f646a8f012db1799", "draws": 0, "layout": "090ee7aa72df997c", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "e5d1eb09a31491fc", "run_float32": "f3bd95158d04e4f9", "run_float64": "e5d1eb09a31491fc"},
    'dpm_solver_1': {"coefs": "193b118971af5e96", "draws": 0, "layout": "6e47ecbf639e1b95", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "4a036159e46cdad5", "run_float32": "1de81b3333d40ac2", "run_float64": "4a036159e46cdad5"},
    'dpm_solver_1/edm': {"coefs": "ce030bb7c6445387", "draws": 0, "layout": "a95620d594227f01", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "c467dedce6d6dcdc", "run_float32": "853b7d4e5a4afd9d", "run_float64": "c467dedce6d6dcdc"},
    'dpm_solver_2': {"coefs": "f59c40aa3e9df07a", "draws": 0, "layout": "988d8093f088a9d1", "mtime": "aed213237975b959", "nst": "11ee9c5c440abe49", "pre": None, "ref_float64": "e12ae1071d29c958", "run_float32": "42be482a1fe0dfc1", "run_float64": "e12ae1071d29c958"},
    'dpm_solver_2/edm': {"coefs": "e1a87c7c159e0d20", "draws": 0, "layout": "ba2a60067f2d3224", "mtime": "ca6beb261aec32a0", "nst": "a2c1787ef0038c6f", "pre": None, "ref_float64": "e079f21ad15e0b41", "run_float32": "fc4a52c6bf598b30", "run_float64": "e079f21ad15e0b41"},
    'dpm_solver_3': {"coefs": "2348d35f43d80e78", "draws": 0, "layout": "847179eabfc8c360", "mtime": "207a4d78a33e1844", "nst": "ccee1517bcd5acc4", "pre": None, "ref_float64": "50b1b9302c74b9a3", "run_float32": "6d2fbdedce012db0", "run_float64": "50b1b9302c74b9a3"},
    'dpm_solver_3/edm': {"coefs": "ff62309686d736e3", "draws": 0, "layout": "ed139c1ef832f5c3", "mtime": "ec960a165973e3c6", "nst": "03ff6436772f4756", "pre": None, "ref_float64": "b04249faf5908345", "run_float32": "594173e1ad527e80", "run_float64": "b04249faf5908345"},
    'dpm_solver_3/inv': {"coefs": "b8b7b09792b0b5cc", "draws": 0, "layout": "ed139c1ef832f5c3", "mtime": "8401b7471b169743", "nst": "03ff6436772f4756", "pre": None, "ref_float64": "ec85d4f15edb3ecd", "run_float32": "27c810acf725d1e1", "run_float64": "ec85d4f15edb3ecd"},
    'dpm_solver_fast': {"coefs": "a72a4815eb5af8b7", "draws": 0, "layout": "8a9e3d2d2564b8df", "mtime": "7dc3e1cc15221b0c", "nst": "9315e865fd143f64", "pre": None, "ref_float64": "4066ead22331c267", "run_float32": "8e0ba7e8ae8c600d", "run_float64": "4066ead22331c267"},
    'dpm_solver_fast/edm': {"coefs": "2ad795e60d23235d", "draws": 0, "layout": "dbdda9427138d9c0", "mtime": "fd96cfc61579be62", "nst": "d520590c6bcf63a9", "pre": None, "ref_float64": "bcdfbdbf50e54ccd", "run_float32": "a2c78ea0236c4de3", "run_float64": "bcdfbdbf50e54ccd"},
    'dpmpp_1': {"coefs": "7b11028a9a33225d", "draws": 0, "layout": "6e47ecbf639e1b95", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "3f5b274a309ae8f6", "run_float32": "2ead8d19b752c364", "run_float64": "3f5b274a309ae8f6"},
    'dpmpp_1/edm': {"coefs": "f51d0df06ab31655", "draws": 0, "layout": "a95620d594227f01", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "2f0f60e6bf6be7e4", "run_float32": "d7ed7338cc7225a4", "run_float64": "2f0f60e6bf6be7e4"},
    'dpmpp_1/rf': {"coefs": "b9f5537892bbda83", "draws": 0, "layout": "c06a95133052ce5c", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "327a9841cfae029b", "run_float32": "3688ba40eaad803c", "run_float64": "327a9841cfae029b"},
    'dpmpp_2m': {"coefs": "7b39ba7e391a10f8", "draws": 0, "layout": "172e811052431107", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "38404e960b0002c7", "run_float32": "8edd84e3e1708de8", "run_float64": "38404e960b0002c7"},
    'dpmpp_2m/edm': {"coefs": "aa922761806b1eac", "draws": 0, "layout": "0173651e6bd13dcd", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "5795ea88e1bb390a", "run_float32": "c1e8df7d80c1d6a2", "run_float64": "5795ea88e1bb390a"},
    'dpmpp_2m/rf': {"coefs": "53362669d628a1f8", "draws": 0, "layout": "4b04886f0f60325e", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "5b7da86af6b00cc5", "run_float32": "8ba52577b534c9ff", "run_float64": "5b7da86af6b00cc5"},
    'dpmpp_2m/thr': {"coefs": "6a8b36c412452d3f", "draws": 0, "layout": "4b04886f0f60325e", "mtime": "5d6d150734340019", "nst": "15d67f715f212612", "pre": None, "ref_float64": "359c5bc817048df0", "run_float32": "858f23e689e1d8ca", "run_float64": "d76a76cd50ff6340"},
    'dpmpp_2m_sde': {"coefs": "ffae1a745c2e50a7", "draws": 7, "layout": "e1b053e19d7573b0", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "157554f625233844", "run_brownian": "c54a74676a0d4ffe", "run_float32": "df3631bb582bea02", "run_float64": "157554f625233844"},
    'dpmpp_2m_sde/batch': {"coefs": "977b3a19f0bf28c9", "draws": 6, "layout": "b2418ac8bbe90e1a", "mtime": "a2506750d8cd5be4", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "f9c27b54aaba890a", "run_brownian": "fdc602489b424f31", "run_float32": "3c5e4b03f7e64b1f", "run_float64": "f9c27b54aaba890a"},
    'dpmpp_2m_sde/edm': {"coefs": "7f00d5d587cfb5f9", "draws": 6, "layout": "b2418ac8bbe90e1a", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "b3ac34a4e77a4a22", "run_brownian": "171ebca04511ee16", "run_float32": "acd619c23898e742", "run_float64": "b3ac34a4e77a4a22"},
    'dpmpp_2m_sde/rf': {"coefs": "b675756aef5dc9c8", "draws": 5, "layout": "b7d5a4dd1caff818", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "6f07befbfd226bd0", "run_brownian": "7d24215cccbe5d3e", "run_float32": "37648a1ff2d86cd0", "run_float64": "6f07befbfd226bd0"},
    'dpmpp_2s': {"coefs": "f8f7f8c15ec21f3c", "draws": 0, "layout": "988d8093f088a9d1", "mtime": "aed213237975b959", "nst": "11ee9c5c440abe49", "pre": None, "ref_float64": "e61d2a7f1f45e7e8", "run_float32": "fcc004d9cbe1e291", "run_float64": "e61d2a7f1f45e7e8"},
    'dpmpp_2s/edm': {"coefs": "0c199912c1fd45cf", "draws": 0, "layout": "ba2a60067f2d3224", "mtime": "ca6beb261aec32a0", "nst": "a2c1787ef0038c6f", "pre": None, "ref_float64": "596a57a1af51278e", "run_float32": "a4f27be0649a6622", "run_float64": "596a57a1af51278e"},
    'dpmpp_2s/rf': {"coefs": "a5dd003c28f6ea8e", "draws": 0, "layout": "df1bc14ada01f20a", "mtime": "2044b01795664822", "nst": "d179f4cbbe5b65bf", "pre": None, "ref_float64": "72b7514bead8735f", "run_float32": "67c9fdc11be4cbdb", "run_float64": "72b7514bead8735f"},
    'dpmpp_3m': {"coefs": "89e5a834f07ad578", "draws": 0, "layout": "341da585b58fbc04", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "03f51c6f08e73f48", "run_float32": "9a0fe63de695adc4", "run_float64": "03f51c6f08e73f48"},
    'dpmpp_3m/edm': {"coefs": "43ea8b782c23b052", "draws": 0, "layout": "090ee7aa72df997c", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "555f0c76484e844a", "run_float32": "bba983269f4e7084", "run_float64": "555f0c76484e844a"},
    'dpmpp_3m/rf': {"coefs": "7ceb56b28754adfe", "draws": 0, "layout": "feb7eacb0edd2aaa", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "1fec1dd98459492d", "run_float32": "7ad7e2c3ec546555", "run_float64": "1fec1dd98459492d"},
    'dpmpp_3m_sde': {"coefs": "0a6d65361ff55f9c", "draws": 7, "layout": "cdb6f8145da44b6d", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "5bc5a61344070b3d", "run_brownian": "eb94908520fac11c", "run_float32": "2ed22c8eeffe86f7", "run_float64": "5bc5a61344070b3d"},
    'dpmpp_3m_sde/edm': {"coefs": "c7e4dba7c3c54bc5", "draws": 6, "layout": "4de6b2f079792966", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "efa1143d0a70fc1e", "run_brownian": "89fe1e872b7b5048", "run_float32": "325fb884655f3a96", "run_float64": "efa1143d0a70fc1e"},
    'dpmpp_3m_sde/rf': {"coefs": "f50c2150600182a2", "draws": 5, "layout": "dff2bd615257f58a", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "c12878816944f710", "run_brownian": "f619ffc1eb610964", "run_float32": "584c9d3542e54a5a", "run_float64": "c12878816944f710"},
    'edm_churn': {"coefs": "00e069c004ba46fc", "draws": 0, "layout": "988d8093f088a9d1", "mtime": "bf910688b7646d33", "nst": "11ee9c5c440abe49", "pre": None, "ref_float64": "82224a61b630935f", "run_float32": "a7a5abe92aee4c65", "run_float64": "82224a61b630935f"},
    'edm_churn/churn': {"coefs": "d9266630abf26a6d", "draws": 6, "layout": "958aa81fe5e9013e", "mtime": "af331943232628b6", "nst": "a2c1787ef0038c6f", "pre": "3239b05c38b825eb", "ref_float64": "9486f490eef97cdf", "run_brownian": "4a3d94b5a4050eb6", "run_float32": "4a3d94b5a4050eb6", "run_float64": "9486f490eef97cdf"},
    'edm_churn/churn_vp': {"coefs": "426e5e29729a7103", "draws": 5, "layout": "9b3bb733cfc160df", "mtime": "ff2bbc1ce0e417b9", "nst": "0dfe1ffd61cf9d57", "pre": "2c03ab457336bb3f", "ref_float64": "ac6d308987e46917", "run_brownian": "13f74c355db0517d", "run_float32": "13f74c355db0517d", "run_float64": "ac6d308987e46917"},
    'edm_churn/edm': {"coefs": "3e06e21a10b53101", "draws": 0, "layout": "ba2a60067f2d3224", "mtime": "270f93c10673af0e", "nst": "a2c1787ef0038c6f", "pre": None, "ref_float64": "7f0b6990bad1ffad", "run_float32": "388fd6c982acaa2e", "run_float64": "7f0b6990bad1ffad"},
    'euler': {"coefs": "426d07f676dc5755", "draws": 0, "layout": "6e47ecbf639e1b95", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "ed63173a66e50c41", "run_float32": "48f18fc32f51a750", "run_float64": "ed63173a66e50c41"},
    'euler/edm': {"coefs": "ce030bb7c6445387", "draws": 0, "layout": "a95620d594227f01", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "c467dedce6d6dcdc", "run_float32": "853b7d4e5a4afd9d", "run_float64": "c467dedce6d6dcdc"},
    'euler/rf': {"coefs": "38b7b4819ab468ce", "draws": 0, "layout": "c06a95133052ce5c", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "9e571a90c1e03239", "run_float32": "824004fd64dcee4d", "run_float64": "9e571a90c1e03239"},
    'euler_ancestral': {"coefs": "c7305cb493204cb2", "draws": 7, "layout": "40543188bd471217", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "9797b1e6f6d9e6b1", "run_brownian": "a948b1e8220eb297", "run_float32": "a3f6d268e8a572c0", "run_float64": "9797b1e6f6d9e6b1"},
    'euler_ancestral/edm': {"coefs": "774ca93e28826f1f", "draws": 6, "layout": "16f678a24d2c4278", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "5c5c1988364f4320", "run_brownian": "01a96e49e50ca1d6", "run_float32": "8056c27ac1f0a083", "run_float64": "5c5c1988364f4320"},
    'euler_ancestral/eta': {"coefs": "00554f0d89ec0bfb", "draws": 5, "layout": "50d7bf7872da9f6c", "mtime": "5d6d150734340019", "nst": "15d67f715f212612", "pre": None, "ref_float64": "2d18fc156bc7319d", "run_brownian": "ec8daad1fa7d0cc2", "run_float32": "10a52bbe0abc0c84", "run_float64": "2d18fc156bc7319d"},
    'euler_maruyama': {"coefs": "e15bfee240157631", "draws": 7, "layout": "40543188bd471217", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "e1ac00144b54837b", "run_brownian": "f2f0a1db1809344f", "run_float32": "8c87d8f380126d24", "run_float64": "e1ac00144b54837b"},
    'euler_maruyama/edm': {"coefs": "cc7c13fc30fabbe7", "draws": 6, "layout": "16f678a24d2c4278", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "6940c2bb750f857e", "run_brownian": "36b2becba9865e58", "run_float32": "35300542a469fc6e", "run_float64": "6940c2bb750f857e"},
    'euler_maruyama/rf': {"coefs": "a981044881678687", "draws": 5, "layout": "50d7bf7872da9f6c", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "e4caae1528bb87c0", "run_brownian": "f05e8a6fb2cdfda7", "run_float32": "51f6a957744fc4ab", "run_float64": "e4caae1528bb87c0"},
    'heun': {"coefs": "10e6d08a7d4511a7", "draws": 0, "layout": "988d8093f088a9d1", "mtime": "bf910688b7646d33", "nst": "11ee9c5c440abe49", "pre": None, "ref_float64": "d1b1a6656eccd2e5", "run_float32": "834e471b6f34e4eb", "run_float64": "d1b1a6656eccd2e5"},
    'heun/edm': {"coefs": "3e06e21a10b53101", "draws": 0, "layout": "ba2a60067f2d3224", "mtime": "270f93c10673af0e", "nst": "a2c1787ef0038c6f", "pre": None, "ref_float64": "7f0b6990bad1ffad", "run_float32": "388fd6c982acaa2e", "run_float64": "7f0b6990bad1ffad"},
    'heun/rf': {"coefs": "b5bd9584c774af02", "draws": 0, "layout": "df1bc14ada01f20a", "mtime": "1e194e0fa32532ca", "nst": "d179f4cbbe5b65bf", "pre": None, "ref_float64": "1442fd9348a14a42", "run_float32": "03d77d6caad8deaf", "run_float64": "1442fd9348a14a42"},
    'ipndm': {"coefs": "f59a606d59c9ddee", "draws": 0, "layout": "2050616ce0c525c4", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "cd7d809675958694", "run_float32": "6c52a88e57a0a758", "run_float64": "cd7d809675958694"},
    'ipndm/edm': {"coefs": "5271d4488f6b58c1", "draws": 0, "layout": "a7846292ee15c702", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "e83a3e892ee8144d", "run_float32": "47fa613a51203444", "run_float64": "e83a3e892ee8144d"},
    'langevin': {"coefs": "10f0cd550dfebd9f", "draws": 7, "layout": "40543188bd471217", "mtime": "c22fb491b90c1f8a", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "9dfac406f068e3c4", "run_brownian": "235978bb3d9ec33c", "run_float32": "235978bb3d9ec33c", "run_float64": "9dfac406f068e3c4"},
    'langevin/edm': {"coefs": "abde187e54786c37", "draws": 6, "layout": "16f678a24d2c4278", "mtime": "60a5d7cb669420d7", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "d3d7b4115e29a370", "run_brownian": "87cc5bcd710c9dfd", "run_float32": "87cc5bcd710c9dfd", "run_float64": "d3d7b4115e29a370"},
    'midpoint': {"coefs": "349d7c0e72b63770", "draws": 0, "layout": "988d8093f088a9d1", "mtime": "43c8aa86d07a7c84", "nst": "11ee9c5c440abe49", "pre": None, "ref_float64": "c27896b1245ec339", "run_float32": "ce35bf4eeb3b808a", "run_float64": "c27896b1245ec339"},
    'midpoint/edm': {"coefs": "773cf69ff79436f7", "draws": 0, "layout": "ba2a60067f2d3224", "mtime": "62740c8f30fe53b5", "nst": "a2c1787ef0038c6f", "pre": None, "ref_float64": "87b8567ba99327b9", "run_float32": "1593a991974bfdd4", "run_float64": "87b8567ba99327b9"},
    'midpoint/rf': {"coefs": "a3c69158ae71ed14", "draws": 0, "layout": "7f96f7c82aba3f86", "mtime": "c61bb127bb212b40", "nst": "0dfe1ffd61cf9d57", "pre": None, "ref_float64": "6ad95047a850a991", "run_float32": "50a729bb88a343eb", "run_float64": "6ad95047a850a991"},
    'pc': {"coefs": "6307f5afb8689a39", "draws": 13, "layout": "b0be5d7c0cd508fd", "mtime": "4015d5684cbf5234", "nst": "11ee9c5c440abe49", "pre": None, "ref_float64": "9f3a531b1e6f76d0", "run_brownian": "1fd364bd5d82c569", "run_float32": "df038735e9296390", "run_float64": "9f3a531b1e6f76d0"},
    'pc/2': {"coefs": "ab44bb1ff3d9d60e", "draws": 11, "layout": "a325ae44e377177d", "mtime": "447b1a22515f9055", "nst": "dce8cb0f206fa125", "pre": None, "ref_float64": "394bdf8c5a43a10b", "run_brownian": "bff6334f412d7b5b", "run_float32": "c2174c8bdba1ef6b", "run_float64": "394bdf8c5a43a10b"},
    'pc/edm': {"coefs": "adebbe296c704b11", "draws": 11, "layout": "30381cdadde041c6", "mtime": "b68528c1fc4a1ee2", "nst": "a2c1787ef0038c6f", "pre": None, "ref_float64": "adaa9fc6827c96e9", "run_brownian": "fe9ecd0f9c8e7972", "run_float32": "2d42a06b0a46d7cb", "run_float64": "adaa9fc6827c96e9"},
    'pc/rf': {"coefs": "a81c31246870cea4", "draws": 9, "layout": "7cdf820359dce086", "mtime": "df93eca71930998e", "nst": "0dfe1ffd61cf9d57", "pre": None, "ref_float64": "4be457d0a8611e00", "run_brownian": "55a8cdc8bdff8169", "run_float32": "948cf2d423dcbffb", "run_float64": "4be457d0a8611e00"},
    'ralston': {"coefs": "3369fd5d67013b2b", "draws": 0, "layout": "988d8093f088a9d1", "mtime": "f582df3233fac11d", "nst": "11ee9c5c440abe49", "pre": None, "ref_float64": "6e8ead8863425918", "run_float32": "ffdf28bba40002a7", "run_float64": "6e8ead8863425918"},
    'ralston/edm': {"coefs": "a5f49b15cfafa0e3", "draws": 0, "layout": "ba2a60067f2d3224", "mtime": "d3f1c3389c81a95e", "nst": "a2c1787ef0038c6f", "pre": None, "ref_float64": "7eaa4e859afb90d6", "run_float32": "1f9d159f737ae924", "run_float64": "7eaa4e859afb90d6"},
    'ralston/rf': {"coefs": "fe9843038f2672d5", "draws": 0, "layout": "7f96f7c82aba3f86", "mtime": "2bdc8cd1f3157924", "nst": "0dfe1ffd61cf9d57", "pre": None, "ref_float64": "44d305e6392e4946", "run_float32": "2fd22edafb3d6dff", "run_float64": "44d305e6392e4946"},
    'rk4': {"coefs": "a3aecbd3388b5bd7", "draws": 0, "layout": "af20b6a900281a19", "mtime": "6701bf2573b6e148", "nst": "21ea4dc620910283", "pre": None, "ref_float64": "4dc98388ec010d12", "run_float32": "c99352024316d61f", "run_float64": "4dc98388ec010d12"},
    'rk4/edm': {"coefs": "37ad915cc4d3f44a", "draws": 0, "layout": "c1782dd2d7d1887c", "mtime": "4f577bc7e72c5bfb", "nst": "62e43eebdfee1f2d", "pre": None, "ref_float64": "0a21780f74f67186", "run_float32": "3adbf7ae9f7c1512", "run_float64": "0a21780f74f67186"},
    'rk4/rf': {"coefs": "519ca37d555ff71f", "draws": 0, "layout": "94d66ca8a6597a9f", "mtime": "9fb44a99417ed983", "nst": "0431ea405659e1b7", "pre": None, "ref_float64": "15836fb19aaceacb", "run_float32": "e165869e4b0e9022", "run_float64": "15836fb19aaceacb"},
    'unipc_1': {"coefs": "b7c07c7ef9e91ca9", "draws": 0, "layout": "d86a8d8fc79bdbc2", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "cc4978d39db1120e", "run_float32": "1358741c09ad4ae5", "run_float64": "cc4978d39db1120e"},
    'unipc_1/edm': {"coefs": "0926c9386995795e", "draws": 0, "layout": "0a348a7810f90024", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "afd313a31bfc070f", "run_float32": "07a869d417f6716e", "run_float64": "afd313a31bfc070f"},
    'unipc_1/rf': {"coefs": "3a61c8fe47deeb86", "draws": 0, "layout": "14dd158afdafe342", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "bf137e262d918106", "run_float32": "176c232893b3a82f", "run_float64": "bf137e262d918106"},
    'unipc_2': {"coefs": "48a96e9603c253ec", "draws": 0, "layout": "a481ffcd360a47f9", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "6c3eac5eb2ff34d8", "run_float32": "71e945126c09933a", "run_float64": "6c3eac5eb2ff34d8"},
    'unipc_2/bh1': {"coefs": "118f2509a9c70486", "draws": 0, "layout": "0cc2e03cdb181f6b", "mtime": "d6df9ea5cb2f5f50", "nst": "fc67e5cbb4b98b43", "pre": None, "ref_float64": "9359b9650f8597a4", "run_float32": "86f66c82780902bc", "run_float64": "9359b9650f8597a4"},
    'unipc_2/edm': {"coefs": "4759f3aa7b0437e4", "draws": 0, "layout": "17abb54b143f82b7", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "f845886588bb8ac1", "run_float32": "861c12b7012ba2df", "run_float64": "f845886588bb8ac1"},
    'unipc_2/rf': {"coefs": "aa7a18d7d6922d73", "draws": 0, "layout": "d6af80b9552d97e9", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "78602195d86b7f0c", "run_float32": "70b1601b4f5405c3", "run_float64": "78602195d86b7f0c"},
    'unipc_3': {"coefs": "232bfc1e7e1711da", "draws": 0, "layout": "6e8fbe7d13f4fa0c", "mtime": "b1af4c8649987eaa", "nst": "006f7ef5e274e100", "pre": None, "ref_float64": "9bad5d6a3c5c7ece", "run_float32": "e484be2021db6953", "run_float64": "9bad5d6a3c5c7ece"},
    'unipc_3/batch': {"coefs": "b5d2f5ede8819db0", "draws": 0, "layout": "40e9f44a58155bea", "mtime": "a2506750d8cd5be4", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "4e21ba991eb416da", "run_float32": "131c497de8d1a65a", "run_float64": "4e21ba991eb416da"},
    'unipc_3/edm': {"coefs": "903b8897726455fe", "draws": 0, "layout": "40e9f44a58155bea", "mtime": "55523a18993fa6ff", "nst": "9ded6c7e637f3673", "pre": None, "ref_float64": "8e6f93eec5bf5a4b", "run_float32": "eac2de00941d3321", "run_float64": "8e6f93eec5bf5a4b"},
    'unipc_3/rf': {"coefs": "54694f01d50a7b33", "draws": 0, "layout": "8725e35039db87e7", "mtime": "61ac8a2696cb2673", "nst": "15d67f715f212612", "pre": None, "ref_float64": "240ad17fb912e8e3", "run_float32": "677ab8e8933e8dd7", "run_float64": "240ad17fb912e8e3"},
}


def _h(*ts):
    m = hashlib.sha256()
    for t in ts:
        if isinstance(t, torch.Tensor):
            m.update(t.detach().cpu().contiguous().numpy().tobytes())
        else:
            m.update(repr(t).encode())
    return m.hexdigest()[:16]


def _cases():
    vp, edm, rf = schedules.VPLinear(), schedules.EDM(), schedules.RectifiedFlow()
    for name in solvers.available():
        try:
            sv = solvers.get(name)
        except TypeError:  # needs statistics (dpm_solver_v3)
            continue
        if not isinstance(sv, Solver):
            continue
        yield name, sv, vp, torch.linspace(1.0, 1e-3, 8), "eps"
        yield name + "/edm", sv, edm, torch.linspace(80.0, 0.002, 7), "x0"
        if sv.native != "eps" and name not in ("langevin", "annealed_langevin"):
            yield name + "/rf", sv, rf, torch.linspace(0.99, 0.0, 6), "velocity"
    yield "edm_churn/churn", solvers.get("edm_churn", s_churn=40.0, s_tmin=0.05, s_tmax=50.0), edm, \
        torch.linspace(80.0, 0.002, 7), "eps"
    yield "edm_churn/churn_vp", solvers.get("edm_churn", s_churn=10.0), vp, torch.linspace(0.6, 1e-3, 6), "eps"
    yield "unipc_2/bh1", solvers.get("unipc_2"), vp, torch.linspace(1.0, 1e-3, 9), "x0"
    yield "ddpm/beta", solvers.get("ddpm", variance="beta"), vp, torch.linspace(1.0, 1e-3, 6), "eps"
    yield "euler_ancestral/eta", solvers.get("euler_ancestral", eta=0.5), vp, torch.linspace(1.0, 1e-3, 6), "score"
    yield "dpm_solver_3/inv", solvers.get("dpm_solver_3"), vp, torch.linspace(1e-2, 0.9, 7), "eps"
    yield "dpmpp_2m/thr", solvers.get("dpmpp_2m", thresholding=True), vp, torch.linspace(1.0, 1e-3, 6), "eps"
    yield "pc/2", solvers.get("pc", n_corrector=2), vp, torch.linspace(1.0, 1e-3, 5), "eps"
    two = torch.stack([torch.linspace(1.0, 1e-3, 7), torch.linspace(0.9, 2e-3, 7)])
    yield "unipc_3/batch", solvers.get("unipc_3"), vp, two, "eps"
    yield "dpmpp_2m_sde/batch", solvers.get("dpmpp_2m_sde"), vp, two, "eps"


def _prelude_hash(p):
    """The prelude as recorded: its (x scale, noise weight) columns, ``[B, 2]``."""
    if p.prelude is None:
        return None
    L = _row.layout(p.solver.history)
    return _h(torch.stack([p.prelude[:, L.ax], p.prelude[:, L.zx]], -1))


def _model(x, t):
    tt = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return torch.sin(1.3 * x + tt) * 0.7 + 0.1 * x


def _run(plan, dtype, brownian=False, ref=False):
    g = torch.Generator().manual_seed(0)
    B = plan.batch if plan.batch > 1 else 3
    x = torch.randn(B, 5, 7, generator=g).to(dtype)
    st = plan.init_state(x, Noise(seed=123, brownian=True) if brownian else Noise(seed=123))
    for i in range(plan.num_steps):
        for s in plan.stages(i):
            out = _model(st.model_input(s), plan.model_time(i, s).to(dtype))
            (plan.step_reference if ref else plan.step)(st, i, s, out)
    return _h(st.x)


CASES = {key: rest for key, *rest in _cases()}


@pytest.mark.parametrize("key", sorted(PINS))
def test_plans_and_steps_are_bit_identical_to_the_recorded_ones(key):
    sv, sched, ts, pred = CASES[key]
    want = PINS[key]
    p = sv.plan(sched, ts, prediction=pred)
    got = {"coefs": _h(p.coefs), "layout": _h(list(p.layout)), "mtime": _h(p.model_times), "nst": _h(list(p.nstages)),
           "pre": _prelude_hash(p), "draws": p.noise_draws}
    got["run_float32"] = _run(p, torch.float32)
    got["run_float64"] = _run(p, torch.float64)
    got["ref_float64"] = _run(p, torch.float64, ref=True)
    if p.noise_draws:
        got["run_brownian"] = _run(p, torch.float32, brownian=True)
    assert got == want


def test_every_pinned_case_is_still_built():
    # solvers added later are not pinned; every pinned one must still exist
    assert set(PINS) <= set(CASES)


# -- the declarations themselves ---------------------------------------------------------------------

@pytest.mark.parametrize("K", range(0, 6))
def test_row_columns_are_the_documented_bijection(K):
    # docs/design.md: [cu, co | ax, ay, ar_0..ar_{K-1}, am | bx, by, br_0..br_{K-1}, bm | zx, zy | ta, tb]
    L = _row.layout(K)
    order = ([L.cu, L.co, L.ax, L.ay] + [L.ar(k) for k in range(K)] + [L.am, L.bx, L.by]
             + [L.br(k) for k in range(K)] + [L.bm, L.zx, L.zy, L.ta, L.tb])
    assert order == list(range(12 + 2 * K)) and L.ncoef == 12 + 2 * K == _row.ncoef(K)
    assert _row.interval(K) == slice(10 + 2 * K, 12 + 2 * K)


def test_row_layout_refuses_bad_slots():
    with pytest.raises(ValueError, match="K: expected 0 <= K <= 5"):
        _row.layout(6)
    with pytest.raises(ValueError, match="K: expected"):
        _row.layout(-1)
    with pytest.raises(IndexError, match=r"k: expected a ring slot in \[0, 2\)"):
        _row.layout(2).ar(2)
    with pytest.raises(IndexError, match="k: expected"):
        _row.layout(0).br(0)


def test_stage_and_node_records_and_enumerations_come_from_the_core():
    from diffcore import _ops
    from diffcore.noise import DOMAIN_BROWNIAN, DOMAIN_PRIOR, DOMAIN_STEP
    from diffcore.param import PREDICTION_TYPES
    R, N = _ops.StageRecord, _ops.NodeRecord
    assert sorted([R.INPUT, R.SLOT, R.WRITE_X, R.WRITE_Y, R.DRAW]) == list(range(R.FIELDS)) == list(range(5))
    assert sorted([N.T, N.ALPHA, N.SIGMA, N.LAM, N.DALPHA, N.DSIGMA]) == list(range(N.FIELDS)) == list(range(6))
    assert tuple(_row.PREDICTION) == PREDICTION_TYPES and sorted(_row.PREDICTION.values()) == list(range(5))
    assert (DOMAIN_STEP, DOMAIN_PRIOR, DOMAIN_BROWNIAN) == tuple(int(v) for v in _ops.NoiseDomain.__members__.values())
    rec = _row.stage([1, 0, 1, 0, 3, 0, -1, 0, 1, -1], 1)
    assert rec == _row.Stage(0, -1, False, True, -1)
    assert _row.draws([1, 0, 1, 0, 3, 0, -1, 0, 1, -1]) == [3, -1]
    with pytest.raises(IndexError, match=r"q: expected a record index in \[0, 2\), got 2"):
        _row.stage([1, 0, 1, 0, 3, 0, -1, 0, 1, -1], 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_step_reads_every_named_column(dtype):
    # a hand-written row (every weight distinct) applied by the kernel equals the documented update
    # computed here in float64, so the kernel and diffcore._row agree on every column
    from diffcore import _ops
    K, B, N = 2, 3, 37
    g = torch.Generator().manual_seed(7)
    L = _row.layout(K)
    row = torch.zeros(1, 1, 1, L.ncoef, dtype=torch.float64)
    vals = torch.rand(L.ncoef, generator=g, dtype=torch.float64) + 0.5
    for c in [L.cu, L.co, L.ax, L.ay, L.ar(0), L.ar(1), L.am, L.bx, L.by, L.br(0), L.br(1), L.bm, L.zx, L.zy]:
        row[0, 0, 0, c] = vals[c]
    x, y, o, z = (torch.randn(B, N, generator=g, dtype=torch.float64) for _ in range(4))
    ring = torch.randn(K, B, N, generator=g, dtype=torch.float64)
    w = {k: float(vals[getattr(L, k)]) for k in ("cu", "co", "ax", "ay", "am", "bx", "by", "bm", "zx", "zy")}
    m = w["cu"] * y + w["co"] * o  # the record below reads the model input from y
    want_x = (w["ax"] * x + w["ay"] * y + float(vals[L.ar(0)]) * ring[0] + float(vals[L.ar(1)]) * ring[1]
              + w["am"] * m + w["zx"] * z)
    want_y = (w["bx"] * x + w["by"] * y + float(vals[L.br(0)]) * ring[0] + float(vals[L.br(1)]) * ring[1]
              + w["bm"] * m + w["zy"] * z)
    R = _ops.StageRecord
    rec = [0] * R.FIELDS
    rec[R.INPUT], rec[R.SLOT], rec[R.WRITE_X], rec[R.WRITE_Y], rec[R.DRAW] = 1, 1, 1, 1, 0
    xs, ys, rs, os_, zs = (t.to(dtype).contiguous() for t in (x, y, ring, o, z))
    st = _ops.make_stepper(xs, ys, rs, row, rec, noise=int(_ops.NoiseKind.tensor))
    from torch.utils.dlpack import to_dlpack
    st.step(0, 0, to_dlpack(os_), False, 1, 0, to_dlpack(zs))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert torch.allclose(xs.double(), want_x, rtol=tol, atol=tol)
    assert torch.allclose(ys.double(), want_y, rtol=tol, atol=tol)
    assert torch.allclose(rs[1].double(), m, rtol=tol, atol=tol) and torch.equal(rs[0], ring[0].to(dtype))


class _BadOptions(solvers.DDIM):
    def __init__(self, opts, **kw):
        super().__init__(**kw)
        self._opts = opts

    def _core_options(self):
        return self._opts


def test_plan_generator_options_are_typed():
    sched = schedules.VPLinear()
    with pytest.raises(ValueError, match="options: plan generator 'ddim' has no option 'bogus'"):
        _BadOptions({"bogus": 1}).plan(sched, torch.linspace(1.0, 1e-3, 4))
    bad = _BadOptions({"eta": "much"})
    bad.method = "ddim_eta"
    with pytest.raises(TypeError, match="options: 'eta' of plan generator 'ddim_eta' got str"):
        bad.plan(sched, torch.linspace(1.0, 1e-3, 4))
    unknown = _BadOptions({})
    unknown.method = "no_such_method"
    with pytest.raises(ValueError, match="method: unknown plan generator 'no_such_method'; registered: .*ddim"):
        unknown.plan(sched, torch.linspace(1.0, 1e-3, 4))


def test_singular_conversion_names_the_prediction():
    # an ε model read by a data-prediction solver where α = 0 (rectified flow's t = 1): x0 = (x − σε)/α
    with pytest.raises(ValueError, match="prediction: converting a 'eps' model to 'x0' is singular"):
        solvers.get("dpmpp_2m").plan(schedules.RectifiedFlow(), torch.linspace(1.0, 0.0, 5), prediction="eps")
    with pytest.raises(ValueError, match="src: the Salimans 'v' prediction"):
        solvers.get("dpmpp_2m").plan(schedules.EDM(), torch.linspace(1.0, 0.0, 5), prediction="v")


def test_schedule_families_and_ot_codes_are_the_cores():
    from diffcore import _ops, ot
    fams = {schedules.VPLinear: "vp_linear", schedules.VPCosine: "vp_cosine", schedules.VPDiscrete: "vp_discrete",
            schedules.SubVP: "subvp", schedules.VE: "ve", schedules.EDM: "edm", schedules.RectifiedFlow: "rectified_flow",
            schedules.Trig: "trig"}
    assert {cls._cid for cls in fams} == set(range(len(_ops.ScheduleFamily.__members__)))
    for cls, name in fams.items():
        assert cls._cid == int(_ops.ScheduleFamily.__members__[name])
    assert ot._CONVERGED == int(_ops.OTStatus.converged) == 0 and ot._BREAKDOWN == int(_ops.OTStatus.breakdown)
    assert (ot._SCALE_OFF, ot._SCALE_ON, ot._SCALE_AUTO) == (0, 1, 2)
