"""tbpr"""
